"""One epoch over the training edges: the batch loop, and the check that every step's loss was finite."""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from irllrec_dist.cli import NonFiniteLoss
from irllrec_dist.model.objective import warmup_scale
from irllrec_dist.training.setup import Trainer

NO_STEP = 1 << 62  # "no non-finite step yet"


def nonfinite_loss_message(epoch: int, step: int, batch: int, bad_terms: list[str], scope: str) -> str:
    return (
        f"non-finite training loss at epoch {epoch}, step {step} (batch {batch} of the epoch): "
        f"{', '.join(bad_terms) or 'on another rank'}{scope}; the run diverged and stopped before saving "
        "anything from this epoch (lower train.lr or the loss weights, check the inputs; "
        "train.resume=false to start over)"
    )


def run_epoch(trainer: Trainer, epoch: int, batch_bar: tqdm) -> tuple[dict, float]:
    """Draw one negative per training edge, shuffle, and step through the global batches, this rank
    taking its slice of each. -> (the epoch's record: mean loss terms, time, throughput, bytes exchanged;
    the intent terms' warm-up scale at its last step).

    A NaN/Inf loss raises NonFiniteLoss naming the epoch, step and loss term, before anything of the
    epoch is validated or saved. In one CPU process every step's loss is read (free there); on a GPU
    or with several ranks, the first non-finite step is tracked on the device and read once per
    epoch with the loss sums (no sync per step), all ranks agreeing."""
    t0 = time.time()
    tc, rank, world, n_edges = trainer.cfg.train, trainer.rank, trainer.world, trainer.n_edges
    trainer.model.train()
    negatives = trainer.negatives()
    order = trainer.rng.permutation(n_edges)
    check_each_step = world == 1 and trainer.device.type == "cpu"
    no_step = torch.tensor(NO_STEP, device=trainer.device)
    first_bad = no_step.clone()
    sums: dict[str, torch.Tensor] = {}
    n_batches = ddp_bytes = table_rows_bytes = 0
    for batch, start in enumerate(range(0, n_edges, tc.batch_size)):
        batch_bar.update()
        if n_edges - start < world:
            break  # a last batch with fewer edges than ranks would leave a rank none (its mean is NaN)
        step = epoch * trainer.batches_per_epoch + batch
        loss, terms, dense, rows = trainer.batch_step(
            order[start : start + tc.batch_size][rank::world], negatives, step
        )
        if check_each_step:  # one CPU process: reading the scalar costs nothing
            if not math.isfinite(loss.item()):
                values = {k: float(v.detach()) for k, v in terms.items()}
                bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
                raise NonFiniteLoss(
                    nonfinite_loss_message(epoch, step, batch, bad or [f"the weighted sum loss={loss.item()}"], "")
                )
        else:  # on the device, no sync: the first step whose loss is not finite
            first_bad = torch.minimum(
                first_bad, torch.where(torch.isfinite(loss.detach()), no_step, torch.full_like(no_step, step))
            )
        ddp_bytes += dense
        table_rows_bytes += rows
        # Summed on the device and read once per epoch: a .item() per step would stall a GPU.
        for name, value in [("loss", loss), *terms.items()]:
            sums[name] = sums.get(name, 0.0) + value.detach().double()
        n_batches += 1
    batch_bar.close()
    means = {k: float(v) / n_batches for k, v in sums.items()}
    if not check_each_step:
        if world > 1:
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        bad_step = int(first_bad)
        if bad_step != NO_STEP:  # every rank sees the same step and raises
            bad = [k for k, v in means.items() if k != "loss" and not math.isfinite(v)]
            if not bad and not math.isfinite(means.get("loss", 0.0)):
                bad = ["the weighted sum"]
            where = f" (summed over the epoch on rank {rank})" if bad else ""
            raise NonFiniteLoss(
                nonfinite_loss_message(epoch, bad_step, bad_step - epoch * trainer.batches_per_epoch, bad, where)
            )
    epoch_s = time.time() - t0
    record = {
        "epoch": epoch,
        **means,
        "epoch_s": round(epoch_s, 3),
        "edges_per_s": round(n_edges / epoch_s, 1),
        "allreduce_bytes_per_step": round((ddp_bytes + table_rows_bytes) / n_batches),
        "table_rows_bytes_per_step": round(table_rows_bytes / n_batches),
    }
    return record, warmup_scale(step, trainer.warmup_steps)
