"""Stage: train the dual towers (LightGCN alone when every text loss is off).

    python -m irllrec_dist.train --config configs/amazon.yaml train.seed=1 [train.workers=2]

The whole loop is in ``train_loop``: per epoch, draw one uniform negative per
training edge and shuffle; per batch, redraw the edge-dropout mask, propagate
over the full graph (``train.fanouts: full``) or through neighbour-sampled
blocks of the batch's nodes (``train.fanouts: 10,10,10``), add up the
switched-on loss terms (model/objective.py), step Adam, update the EMA teacher. Validate on Recall@monitor_k every
``eval_every`` epochs, keep the best checkpoint, stop after ``patience`` checks
without improvement (not before ``min_epochs``), then evaluate the best on test. With ``train.workers`` >= 1
the same loop runs on Ray Train workers (``run_ray``), each taking its slice of
every global batch under DistributedDataParallel; with sampled blocks the
embedding tables stay out of DDP and ranks exchange only the rows their
batches touched (sparse_allreduce.py).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from irllrec_dist import evaluate, runfolder, storage
from irllrec_dist.cli import CheckpointError, NonFiniteLoss, StageError, run_main
from irllrec_dist.config import (Config, TrainConfig, add_config_args, config_differences, config_from_dict,
                                  load_config)
from irllrec_dist.data import dataset as ds
from irllrec_dist.graph.adjacency import BipartiteAdjacency, build_adjacency
from irllrec_dist.graph.neighbor_sampler import BipartiteCSR, build_csr, drop_edges, make_sampler
from irllrec_dist.graph.negative_sampler import edge_keys, sample_negatives
from irllrec_dist.model.dual_tower import TextInputs, build_model
from irllrec_dist.model.ema import EMATeacher
from irllrec_dist.model.objective import loss_terms, warmup_scale, weighted_sum
from irllrec_dist.model.views import FullGraphViews, SampledViews
from irllrec_dist.monitoring import TensorBoardLog
from irllrec_dist.sparse_allreduce import allreduce_rows, allreduce_sparse_rows, dense_allreduce_bytes

log = logging.getLogger("irllrec_dist.train")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_text(cfg: Config, data: ds.Dataset) -> TextInputs | None:
    if not cfg.loss.uses_text():
        return None
    from irllrec_dist.embed import load_text_inputs

    return load_text_inputs(cfg.run_root, data.n_users, data.n_items)


class TrainStep(nn.Module):
    """One step's forward: propagation and every loss term (unweighted; ``StepRunner`` weighs
    them), so that DistributedDataParallel sees the whole computation behind ``loss.backward()``
    as one forward call.

    Full graph (``sampler`` None): propagate over the whole graph with the edge-dropout
    ``mask``. Sampled: blocks for the batch's users and items, edges dropped per block, both
    drawn from counter-based uniforms of ``sample_key`` = (seed, global step), so that a node's
    sample is the same on whichever rank draws it; the second output is then the global node
    ids whose embedding rows got gradient."""

    EMBEDDING_TABLES = ("model.user_emb", "model.item_emb")

    def __init__(self, model: nn.Module, adj, sampler, text: TextInputs | None, cfg: Config,
                 teacher: EMATeacher | None):
        super().__init__()
        self.model, self.adj, self.sampler, self.text, self.loss_cfg = model, adj, sampler, text, cfg.loss
        self.edge_keep = cfg.train.edge_keep
        self.sparse_tables = cfg.train.sparse_tables and sampler is not None
        self.teacher = teacher  # frozen: DDP ignores parameters without requires_grad

    def forward(self, mask, bu, bp, bn, gen, sample_key):
        if self.sampler is None:
            mats = self.adj.matrices(mask)
            views = FullGraphViews(self.model, self.model.propagate(*mats), self.adj, mask)
            teacher_views = (FullGraphViews(self.teacher.module, self.teacher.propagate(*mats), self.adj, mask)
                             if self.teacher is not None else None)
            touched = None
        else:
            n_users = self.model.user_emb.shape[0]
            seeds = torch.unique(torch.cat([bu, bp + n_users, bn + n_users])).cpu()  # the sampler walks a CPU CSR
            blocks = self.sampler.sample(seeds, key=sample_key)
            if self.edge_keep < 1.0:
                drop_edges(blocks, self.edge_keep, sample_key)
            device = self.model.user_emb.device
            blocks, seeds = [to_device(b, device) for b in blocks], seeds.to(device)
            views = SampledViews(self.model, blocks, seeds, self.sparse_tables)
            teacher_views = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_views = SampledViews(self.teacher.module, blocks, seeds)
            touched = blocks[0].src_ids
        return loss_terms(self.model, views, bu, bp, bn, self.loss_cfg, self.text, teacher_views, gen), touched


def to_device(obj, device):
    """A copy of a dataclass of tensors (adjacency, block, text inputs) with its tensors on ``device``."""
    if obj is None:
        return None
    return replace(obj, **{f.name: getattr(obj, f.name).to(device) for f in fields(obj)
                           if isinstance(getattr(obj, f.name), torch.Tensor)})


@dataclass
class TrainingGraph:
    """What every rank trains on: the dataset, the normalised adjacency (full-graph steps and
    evaluation) and, with sampled steps, the symmetric CSR the sampler walks."""

    data: ds.Dataset
    adj: BipartiteAdjacency
    csr: BipartiteCSR | None


def build_graph(cfg: Config) -> TrainingGraph:
    data = ds.load(cfg.run_root)
    csr = build_csr(data.train, data.n_users, data.n_items) if cfg.train.fanout_list() else None
    return TrainingGraph(data, build_adjacency(data.train, data.n_users, data.n_items), csr)


def share_graph(graph: TrainingGraph) -> dict:
    """Tensors as numpy arrays, which the Ray object store hands to every worker of a node
    zero-copy from one shared-memory object (tensors would be pickled, i.e. copied per worker)."""
    def arrays(obj):
        if obj is None:
            return None
        values = {f.name: getattr(obj, f.name) for f in fields(obj)}
        return type(obj), {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in values.items()}

    return {"data": graph.data, "adj": arrays(graph.adj), "csr": arrays(graph.csr)}


def unshare_graph(shared: dict) -> TrainingGraph:
    def tensors(packed):
        if packed is None:
            return None
        cls, values = packed
        with warnings.catch_warnings():  # read-only shared memory: nothing here writes into it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return cls(**{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in values.items()})

    return TrainingGraph(shared["data"], tensors(shared["adj"]), tensors(shared["csr"]))


class StepRunner:
    """One optimiser step of a ``TrainStep`` on this rank: forward, backward, gradient exchange,
    Adam, EMA-teacher update. With world > 1 the step runs under DDP; when it is sampled, the
    embedding tables stay out of DDP and only the rows the ranks' batches touched are
    exchanged (full-graph steps touch every row, so there DDP reduces the tables too). With
    ``train.sparse_tables`` the tables' gradients are row-sparse and SparseAdam moves only
    those rows; the other parameters keep Adam."""

    def __init__(self, step: TrainStep, lr: float, world: int, compiled: bool = False):
        self.model, self.teacher, self.world, self.loss_cfg = step.model, step.teacher, world, step.loss_cfg
        device = step.model.user_emb.device
        self.tables = [step.model.user_emb, step.model.item_emb]
        distributed = world > 1
        self.row_exchange = distributed and step.sampler is not None
        if self.row_exchange:
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                step, list(TrainStep.EMBEDDING_TABLES))
        ddp_params = [p for n, p in step.named_parameters()
                      if p.requires_grad and not (self.row_exchange and n in TrainStep.EMBEDDING_TABLES)]
        self.step = step
        if distributed and ddp_params:
            # Unused parameters happen legitimately (e.g. the intent MLP when only the profile
            # loss is on), so DDP must look for them.
            self.step = nn.parallel.DistributedDataParallel(
                step, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True)
        if compiled:
            self.step = torch.compile(self.step, dynamic=True)
        self.ddp_bytes = dense_allreduce_bytes(ddp_params) if distributed else 0
        self.sparse_tables = step.sparse_tables
        if self.sparse_tables:
            others = [p for p in step.model.parameters() if all(p is not t for t in self.tables)]
            self.optimizers = [torch.optim.SparseAdam(self.tables, lr=lr)]
            if others:
                self.optimizers.insert(0, torch.optim.Adam(others, lr=lr))
        else:
            self.optimizers = [torch.optim.Adam(step.model.parameters(), lr=lr)]

    def optimizer_state(self) -> list[dict]:
        return [o.state_dict() for o in self.optimizers]

    def load_optimizer_state(self, states: list[dict] | dict) -> None:
        if isinstance(states, dict):  # checkpoints written before optimizers became a list
            states = [states]
        if len(states) != len(self.optimizers):
            raise CheckpointError(f"checkpoint holds {len(states)} optimizer state(s), this run has "
                                  f"{len(self.optimizers)} (train.sparse_tables changed since it was written?)")
        for o, s in zip(self.optimizers, states):
            o.load_state_dict(s)

    def __call__(self, mask, bu, bp, bn, gen, sample_key, intent_scale: float = 1.0):
        """-> (loss, terms, bytes DDP all-reduced, bytes of table rows exchanged) of this rank."""
        terms, touched = self.step(mask, bu, bp, bn, gen, sample_key)
        # Weighted outside the (possibly compiled) step: a float that changes every step would recompile it.
        loss = weighted_sum(terms, self.loss_cfg, intent_scale)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        row_bytes = 0
        if self.row_exchange and self.sparse_tables:
            for table in self.tables:
                row_bytes += allreduce_sparse_rows(table, self.world)
        elif self.row_exchange:
            n_users = self.tables[0].shape[0]
            rows = (touched[touched < n_users], touched[touched >= n_users] - n_users)
            for table, r in zip(self.tables, rows):
                if table.grad is None:
                    table.grad = torch.zeros_like(table)
                row_bytes += allreduce_rows(table.grad, r, self.world)
        for o in self.optimizers:
            o.step()
        if self.teacher is not None:
            self.teacher.update(self.model)
        return loss, terms, self.ddp_bytes, row_bytes


def early_stop(bad_checks: int, epochs_done: int, patience: int, min_epochs: int) -> bool:
    """Stop after ``patience`` validation checks without improvement, never before ``min_epochs``."""
    return bad_checks >= patience and epochs_done >= min_epochs


def stop_horizon(best_epoch: int | None, next_epoch: int, tc: TrainConfig) -> int:
    """How many epochs the run lasts if validation never improves again (the progress bar's total,
    so that its ETA is the earliest end): validation runs at epochs 0, eval_every, 2 * eval_every,
    ...; ``patience`` checks after the best one -- or after the first check still to come, which
    becomes the best -- ``early_stop`` fires at the first check that is also past ``min_epochs``;
    never beyond ``max_epochs``."""
    every = tc.eval_every
    if best_epoch is None:
        best_epoch = -(-next_epoch // every) * every
    last = max(best_epoch + tc.patience * every, tc.min_epochs - 1)
    last = -(-last // every) * every  # a check epoch
    return min(last + 1, tc.max_epochs)


def _batch_bar(total: int, epoch: int, lead: bool) -> tqdm:
    """The batches of one epoch, shown only once an epoch has taken a few seconds, gone when done."""
    return tqdm(total=total, desc=f"epoch {epoch}", unit="batch", leave=False, delay=3.0, dynamic_ncols=True,
                disable=not lead)


NO_STEP = 1 << 62  # "no non-finite step yet"


def nonfinite_loss_message(epoch: int, step: int, batch: int, bad_terms: list[str], scope: str) -> str:
    return (f"non-finite training loss at epoch {epoch}, step {step} (batch {batch} of the epoch): "
            f"{', '.join(bad_terms) or 'on another rank'}{scope}; the run diverged and stopped before saving "
            "anything from this epoch (lower train.lr or the loss weights, check the inputs; "
            "train.resume=false to start over)")


def _digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for t in module.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_loop(cfg: Config, rank: int = 0, world: int = 1, checkpoints=None,
               graph: TrainingGraph | None = None, device: torch.device | None = None,
               inputs: dict | None = None) -> dict | None:
    """``_train_loop`` (below), with the run folder's files on rank 0 (runfolder.py): the resolved
    ``config.yaml`` first, ``train.log`` at every validation and at the end (also when the run
    fails), ``curves.png`` when it finished and matplotlib is there."""
    if rank != 0:
        return _train_loop(cfg, rank, world, checkpoints, graph, device, inputs)
    runfolder.write_config(cfg)
    runlog = runfolder.RunLog(evaluate.run_uri(cfg, "train.log"))
    with runlog.attached():
        try:
            summary = _train_loop(cfg, rank, world, checkpoints, graph, device, inputs, runlog)
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


def _train_loop(cfg: Config, rank: int = 0, world: int = 1, checkpoints=None,
                graph: TrainingGraph | None = None, device: torch.device | None = None,
                inputs: dict | None = None, runlog: runfolder.RunLog | None = None) -> dict | None:
    """The training loop; with world > 1 it runs on every Ray Train worker (torch.distributed is
    initialised) and rank 0 validates, checkpoints and returns the summary. ``checkpoints``
    (RayCheckpoints, or StorageCheckpoints in-process) restores the latest resumable state and
    saves a new one every validation;
    ``graph`` (Ray runs) is the graph the driver built once, else it is built here; ``device``
    (Ray runs) is the worker's, else CUDA when train.gpus_per_worker is 1; ``inputs`` the dataset /
    embedding hashes (``evaluate.input_hashes``) read before the graph was built, recorded in best.pt.

    A NaN/Inf loss stops the run with NonFiniteLoss naming epoch, step and loss term, before
    anything of that epoch is validated or saved. In one CPU process every step's loss is read
    (free there); on a GPU or with several ranks, the first non-finite step is tracked on the
    device and read once per epoch with the loss sums (no sync per step), all ranks agreeing."""
    tc = cfg.train
    if inputs is None:
        inputs = evaluate.input_hashes(cfg)
    if device is None:
        if tc.gpus_per_worker and not torch.cuda.is_available():
            raise StageError("train.gpus_per_worker=1 but torch sees no CUDA device here")
        device = torch.device("cuda" if tc.gpus_per_worker else "cpu")
    distributed = world > 1
    torch.set_num_threads(tc.threads or (tc.cpus_per_worker if tc.workers else os.cpu_count()) or 1)
    torch.manual_seed(tc.seed)
    # The same seed on every rank: negatives, shuffling and dropout masks agree across
    # ranks, and each rank takes its own slice of every global batch.
    rng = np.random.default_rng(tc.seed)
    t_start = time.time()

    graph = graph or build_graph(cfg)
    data, adj = graph.data, graph.adj
    train_u, train_i = data.train[:, 0], data.train[:, 1]
    train_keys = np.sort(edge_keys(train_u, train_i, data.n_items))
    n_train = len(train_u)
    if n_train < world:
        raise StageError(f"{n_train} training edges cannot be split across {world} workers")
    text = to_device(load_text(cfg, data), device)
    adj = to_device(adj, device)  # the sampler's CSR stays on the CPU
    model = build_model(cfg, data.n_users, data.n_items, text.dim if text is not None else None).to(device)
    teacher = EMATeacher(model, cfg.loss.ema_momentum) if cfg.loss.itm else None
    sampler = make_sampler(graph.csr, cfg.train.fanout_list(), tc.sampler) if graph.csr is not None else None
    runner = StepRunner(TrainStep(model, adj, sampler, text, cfg, teacher), tc.lr, world, tc.compile)
    # Text-loss randomness (noise, hard negatives) has its own stream so that
    # switching those losses on does not change the graph tower's draws.
    gen = torch.Generator().manual_seed(tc.seed + 1 + rank)
    batches_per_epoch = -(-n_train // tc.batch_size)
    warmup_steps = round(cfg.loss.warmup_epochs * batches_per_epoch)
    lead = rank == 0
    if lead:
        log.info("train: %d users, %d items, %d edges; %d worker(s), %d threads each", data.n_users,
                 data.n_items, n_train, world, torch.get_num_threads())

    tb = TensorBoardLog(evaluate.run_uri(cfg, "tensorboard")) if lead else None
    history, best, best_state, best_teacher, bad_checks, first_epoch = [], None, None, None, 0, 0
    last_epoch, monitor = tc.max_epochs, f"recall@{cfg.eval.monitor_k}"
    state = checkpoints.load() if checkpoints is not None else None
    if state is not None:  # resume exactly where the last checkpoint left off
        model.load_state_dict(state["model"])
        runner.load_optimizer_state(state["optimizer"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["gen_rng"][rank])
        history, best, bad_checks, first_epoch = state["history"], state["best"], state["bad_checks"], state["epoch"]
        best_state, best_teacher = state["best_state"], state["best_teacher"]
        t_start -= state["wall_s"]  # wall_s in the summary covers every segment of the run
        if lead:
            log.info("resumed from checkpoint at epoch %d (best val %s %.4f at epoch %d)", first_epoch, monitor,
                     best[monitor], best["epoch"])
        if early_stop(bad_checks, first_epoch, tc.patience, tc.min_epochs):
            last_epoch = first_epoch  # it had stopped, then died before its test metrics were written
        if runlog is not None:
            runlog.keep_previous()
    # The total is where early stopping ends the run if validation does not improve again; it
    # moves out as the best epoch does.
    bar = tqdm(range(first_epoch, last_epoch), desc="train", unit="epoch", dynamic_ncols=True, disable=not lead,
               initial=first_epoch,
               total=max(first_epoch, stop_horizon(best["epoch"] if best else None, first_epoch, tc)))
    check_each_step = world == 1 and device.type == "cpu"
    no_step = torch.tensor(NO_STEP, device=device)
    for epoch in bar:
        t0 = time.time()
        model.train()
        neg = sample_negatives(train_u, train_keys, data.n_items, rng)
        perm = rng.permutation(n_train)
        sums: dict[str, float] = {}
        n_batches, comm_bytes, row_bytes = 0, 0, 0
        first_bad = no_step.clone()
        batch_bar = _batch_bar(batches_per_epoch, epoch, lead)
        for batch, start in enumerate(range(0, n_train, tc.batch_size)):
            batch_bar.update()
            if n_train - start < world:
                break  # a last batch with fewer edges than ranks would leave a rank none (its mean is NaN)
            b = perm[start:start + tc.batch_size][rank::world]
            mask = None
            if tc.edge_keep < 1.0 and sampler is None:
                mask = (torch.rand(n_train) < tc.edge_keep).to(torch.float32).to(device)
            bu, bp, bn = (torch.from_numpy(x).to(device) for x in (train_u[b], train_i[b], neg[b]))
            step = epoch * batches_per_epoch + batch
            intent_scale = warmup_scale(step, warmup_steps)
            loss, terms, dense_bytes, rows_bytes = runner(mask, bu, bp, bn, gen, (tc.seed, step), intent_scale)
            if check_each_step:  # one CPU process: reading the scalar costs nothing
                if not math.isfinite(loss.item()):
                    values = {k: float(v.detach()) for k, v in terms.items()}
                    bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
                    raise NonFiniteLoss(nonfinite_loss_message(
                        epoch, step, batch, bad or [f"the weighted sum loss={loss.item()}"], ""))
            else:  # on the device, no sync: the first step whose loss is not finite
                first_bad = torch.minimum(first_bad, torch.where(torch.isfinite(loss.detach()), no_step,
                                                                 torch.full_like(no_step, step)))
            comm_bytes += dense_bytes
            row_bytes += rows_bytes
            # Summed on the device and read once per epoch: a .item() per step would stall a GPU.
            for name, value in [("loss", loss), *terms.items()]:
                sums[name] = sums.get(name, 0.0) + value.detach().double()
            n_batches += 1
        batch_bar.close()
        sums = {k: float(v) for k, v in sums.items()}
        if not check_each_step:
            if distributed:
                dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
            bad_step = int(first_bad)
            if bad_step != NO_STEP:  # every rank sees the same step and raises
                bad = [k for k, v in sums.items() if k != "loss" and not math.isfinite(v)]
                if not bad and not math.isfinite(sums.get("loss", 0.0)):
                    bad = ["the weighted sum"]
                where = f" (summed over the epoch on rank {rank})" if bad else ""
                raise NonFiniteLoss(nonfinite_loss_message(epoch, bad_step, bad_step - epoch * batches_per_epoch,
                                                           bad, where))
        epoch_s = time.time() - t0
        record = {"epoch": epoch, **{k: v / n_batches for k, v in sums.items()},
                  "epoch_s": round(epoch_s, 3), "edges_per_s": round(n_train / epoch_s, 1),
                  "allreduce_bytes_per_step": round((comm_bytes + row_bytes) / n_batches),
                  "table_rows_bytes_per_step": round(row_bytes / n_batches)}
        if tb is not None:
            tb.scalars(epoch, {k: v for k, v in record.items() if k in sums}, "loss/")
            tb.scalars(epoch, {"edges_per_s_per_worker": n_train / world / epoch_s, "epoch_s": epoch_s},
                       "throughput/")
            tb.scalars(epoch, {"peak_rss_mib": peak_rss_mib()}, "memory/")
            tb.scalars(epoch, {"lr": runner.optimizers[0].param_groups[0]["lr"], "intent_scale": intent_scale}, "optim/")
            if distributed:
                tb.scalars(epoch, {"allreduce_bytes_per_step": record["allreduce_bytes_per_step"],
                                   "table_rows_bytes_per_step": record["table_rows_bytes_per_step"],
                                   "dense_tables_bytes_per_step": dense_allreduce_bytes(runner.tables)}, "comm/")

        if epoch % tc.eval_every == 0:
            # Every rank ranks a shard of the users and gets the same metrics, so all ranks
            # take the same early-stopping decision; rank 0 keeps the best state and logs.
            model.eval()
            user_all, item_all = evaluate.scoring_vectors(cfg, model, adj.matrices(), text)
            val = evaluate.split_metrics(cfg, data, user_all, item_all, "val", rank=rank, world=world)
            record.update({f"val_{k}": v for k, v in val.items() if "@" in k})
            if best is None or val[monitor] > best[monitor]:
                best, bad_checks = dict(val, epoch=epoch), 0
                if lead:
                    best_state = copy.deepcopy(model.state_dict())
                    best_teacher = copy.deepcopy(teacher.state_dict()) if teacher is not None else None
                    bar.total = stop_horizon(epoch, epoch + 1, tc)
                    bar.refresh()
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
                if runlog is not None:
                    runlog.save()
        history.append(record)
        if checkpoints is not None and epoch % tc.eval_every == 0:
            gen_states = [gen.get_state()]
            if distributed:
                gen_states = [None] * world
                dist.all_gather_object(gen_states, gen.get_state())
            checkpoints.save({
                "epoch": epoch + 1, "model": model.state_dict(), "optimizer": runner.optimizer_state(),
                "teacher": teacher.state_dict() if teacher is not None else None,
                "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "gen_rng": gen_states,
                "history": history, "best": best, "bad_checks": bad_checks,
                "best_state": best_state, "best_teacher": best_teacher, "wall_s": time.time() - t_start,
            } if lead else None, {"epoch": epoch, **{k: v for k, v in record.items() if k.startswith("val_")}})
        if epoch % tc.eval_every == 0 and early_stop(bad_checks, epoch + 1, tc.patience, tc.min_epochs):
            if lead:
                log.info("early stop at epoch %d: %d checks without improvement", epoch, bad_checks)
            break
    bar.close()

    # Replicas must agree bit for bit: students through DDP, teachers through identical updates.
    digests = {"model": _digest(model), "teacher": _digest(teacher) if teacher is not None else None}
    # Only rank 0 holds the best state: its check travels with the digests, so that every rank
    # raises on a non-finite one (a Ray run ends on all ranks at once, see _ray_worker).
    bad = evaluate.nonfinite_tensor(best_state) if lead else None
    gathered = [(digests, bad)]
    if distributed:
        gathered = [None] * world
        dist.all_gather_object(gathered, (digests, bad))
    all_digests, bad = [d for d, _ in gathered], gathered[0][1]
    if bad is not None:
        raise NonFiniteLoss(f"the best model state (epoch {best['epoch']}) holds non-finite weights: {bad}; "
                            "not saved (the run diverged: lower train.lr)")
    if not lead:
        return None

    buf = io.BytesIO()
    # What evaluate compares before it scores with this file: the config, the dataset's size, the
    # dataset / embedding hashes it was trained on (evaluate.load_checkpoint).
    torch.save({"model": best_state, "teacher": best_teacher, "epoch": best["epoch"],
                "text_dim": text.dim if text is not None else None,
                "n_users": data.n_users, "n_items": data.n_items, "inputs": inputs,
                "val": {k: v for k, v in best.items()}, "config": cfg.to_dict()}, buf)
    storage.write_bytes(evaluate.run_uri(cfg, "checkpoints", "best.pt"), buf.getvalue())
    test = evaluate.run(cfg, "test")
    summary = {
        "run_name": tc.run_name, "seed": tc.seed, "workers": world, "best_epoch": best["epoch"],
        "epochs_run": len(history), "wall_s": round(time.time() - t_start, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "replicas_identical": all(d == all_digests[0] for d in all_digests),
        "resumed_at_epoch": first_epoch if state is not None else None,
        "fanouts": tc.fanouts,
        "allreduce_bytes_per_step": history[-1]["allreduce_bytes_per_step"],
        "table_rows_bytes_per_step": history[-1]["table_rows_bytes_per_step"],
        "dense_tables_bytes_per_step": dense_allreduce_bytes(runner.tables),
        "val": {k: v for k, v in best.items() if "@" in k},
        "test": {k: v for k, v in test.items() if "@" in k or k == "users"},
        "test_by_degree": test["by_degree"],
        **{name: test[name] for name in ds.COLD_TABLES if name in test},
        "history": history,
    }
    storage.write_json(evaluate.run_uri(cfg, "metrics.json"), summary)
    log.info("done: best epoch %d (val %s %.4f), test %s %.4f, %d epochs in %.0fs -> %s", best["epoch"], monitor,
             best[monitor], monitor, test.get(monitor, float("nan")), len(history), summary["wall_s"],
             evaluate.run_uri(cfg, "metrics.json"))
    if checkpoints is not None:
        checkpoints.finished()
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

    def finished(self) -> None:
        """Ray Train keeps its checkpoints under its own storage (CheckpointConfig.num_to_keep)."""


class StorageCheckpoints:
    """Resumable state of an in-process run in its folder (``<run>/checkpoints/state.pt``), written
    atomically at every validation. A run started again with the same config goes on from the last
    one, bit for bit as if never stopped; another config is refused rather than mixed in. The file
    goes once metrics.json is written, so a finished run started again trains from scratch."""

    # What only changes how fast, how long or where a run goes may differ on resume (a run cut on
    # a GPU goes on on a CPU). Threads, compile and the device change float rounding: bit for bit
    # holds only when they stay the same.
    RUNTIME_KEYS = frozenset({"train.threads", "train.max_epochs", "train.compile", "train.gpus_per_worker",
                              "train.ray_storage", "eval.export_top_k"})

    def __init__(self, cfg: Config, inputs: dict | None = None):
        self.uri = evaluate.run_uri(cfg, "checkpoints", "state.pt")
        self.config = cfg.to_dict()
        self.inputs = inputs if inputs is not None else evaluate.input_hashes(cfg)

    def load(self) -> dict | None:
        if not storage.exists(self.uri):
            return None
        refuse = f"{self.uri}: %s; start over with train.resume=false"
        try:
            state = torch.load(io.BytesIO(storage.read_bytes(self.uri)), map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
            raise CheckpointError(refuse % f"not a readable training state ({type(e).__name__}: "
                                  f"{(str(e).strip().splitlines() or [''])[0]})") from e
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise CheckpointError(refuse % "not a training state written by train")
        # A key the saving code did not have yet ran at its default (e.g. loss.warmup_epochs = 0).
        differ = [k for k, _, _ in config_differences(state["config"], self.config, self.RUNTIME_KEYS.__contains__)]
        if differ:
            raise CheckpointError(refuse % f"saved by a run with other settings ({', '.join(differ)}); "
                                  "start it with those settings to resume")
        if state.get("inputs") != self.inputs:
            raise CheckpointError(refuse % f"saved on other inputs ({state.get('inputs')} then, {self.inputs} now: "
                                  "re-ingested or re-embedded since)")
        return state

    def save(self, state: dict | None, metrics: dict) -> None:
        buf = io.BytesIO()
        torch.save({**state, "config": self.config, "inputs": self.inputs}, buf)
        storage.write_bytes(self.uri, buf.getvalue())

    def finished(self) -> None:
        storage.remove(self.uri)


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
        train_loop(config_from_dict(config["config"]), ctx.get_world_rank(), ctx.get_world_size(), RayCheckpoints(),
                   graph, get_device(), config.get("inputs"))
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
    inputs = evaluate.input_hashes(cfg)  # before the graph is read: best.pt records what it was built from
    graph_ref = ray.put(share_graph(build_graph(cfg)))
    log.info("training graph built and shared in %.1fs", time.time() - t0)
    trainer = TorchTrainer(
        _ray_worker, train_loop_config={"config": cfg.to_dict(), "graph": graph_ref, "inputs": inputs},
        torch_config=TorchConfig(backend="nccl" if tc.gpus_per_worker else "gloo"),
        scaling_config=ScalingConfig(num_workers=tc.workers, use_gpu=bool(tc.gpus_per_worker),
                                     resources_per_worker={"CPU": tc.cpus_per_worker,
                                                           **({"GPU": tc.gpus_per_worker} if tc.gpus_per_worker else {})}),
        run_config=RunConfig(name=f"irllrec-{tc.run_name}-{int(time.time())}",
                             **ray_storage,
                             failure_config=FailureConfig(max_failures=tc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    stopped = _nonfinite_message(result)
    if stopped is not None:  # the run diverged: there is no metrics.json to read
        raise NonFiniteLoss(stopped)
    return storage.read_json(evaluate.run_uri(cfg, "metrics.json"))


def run(cfg: Config) -> dict:
    if cfg.train.workers >= 1:
        return run_ray(cfg)
    inputs = evaluate.input_hashes(cfg)
    checkpoints = StorageCheckpoints(cfg, inputs)
    if not cfg.train.resume:
        checkpoints.finished()  # a stale state must not be picked up by a later resumed run
        checkpoints = None
    return train_loop(cfg, checkpoints=checkpoints, inputs=inputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    return run_main("train", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(args.config, args.overrides)
    summary = run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
