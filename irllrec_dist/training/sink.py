"""Where a run's numbers go, from rank 0 only: TensorBoard event files, the log line per
validation (also into ``train.log``), and the progress bars (epochs, and batches within an epoch)."""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from irllrec_dist.artifacts import run_uri
from irllrec_dist.memory import peak_rss_mib
from irllrec_dist.monitoring import TensorBoardLog
from irllrec_dist.runfolder import RunLog
from irllrec_dist.sparse_allreduce import dense_allreduce_bytes
from irllrec_dist.training.setup import Trainer
from irllrec_dist.training.validation import Validator

log = logging.getLogger("irllrec_dist.train")

NOT_LOSS_TERMS = frozenset({"epoch", "epoch_s", "edges_per_s", "allreduce_bytes_per_step", "table_rows_bytes_per_step"})


class MetricsSink:
    """Every method is a no-op on ranks other than 0. The epoch bar's total is the horizon early
    stopping can still reach (``Validator.horizon``), so its ETA is the earliest end; it moves out
    as the best epoch does."""

    def __init__(self, trainer: Trainer, validator: Validator, first_epoch: int, runlog: RunLog | None = None):
        self.trainer, self.validator, self.runlog = trainer, validator, runlog
        self.lead = trainer.rank == 0
        self.tb = TensorBoardLog(run_uri(trainer.cfg, "tensorboard")) if self.lead else None
        self.bar = tqdm(
            desc="train",
            unit="epoch",
            dynamic_ncols=True,
            disable=not self.lead,
            initial=first_epoch,
            total=max(first_epoch, validator.horizon(first_epoch)),
        )
        if self.lead:
            data = trainer.data
            log.info(
                "train: %d users, %d items, %d edges; %d worker(s), %d threads each",
                data.n_users,
                data.n_items,
                trainer.n_edges,
                trainer.world,
                torch.get_num_threads(),
            )

    def batch_bar(self, epoch: int) -> tqdm:
        """The batches of one epoch, shown only once an epoch has taken a few seconds, gone when done."""
        return tqdm(
            total=self.trainer.batches_per_epoch,
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
            delay=3.0,
            dynamic_ncols=True,
            disable=not self.lead,
        )

    def epoch(self, record: dict, intent_scale: float) -> None:
        if not self.lead:
            return
        t, epoch, epoch_s = self.trainer, record["epoch"], record["epoch_s"]
        self.tb.scalars(epoch, {k: v for k, v in record.items() if k not in NOT_LOSS_TERMS}, "loss/")
        self.tb.scalars(
            epoch, {"edges_per_s_per_worker": t.n_edges / t.world / epoch_s, "epoch_s": epoch_s}, "throughput/"
        )
        self.tb.scalars(epoch, {"peak_rss_mib": peak_rss_mib()}, "memory/")
        self.tb.scalars(
            epoch, {"lr": t.step.optimizers[0].param_groups[0]["lr"], "intent_scale": intent_scale}, "optim/"
        )
        if t.world > 1:
            self.tb.scalars(
                epoch,
                {
                    "allreduce_bytes_per_step": record["allreduce_bytes_per_step"],
                    "table_rows_bytes_per_step": record["table_rows_bytes_per_step"],
                    "dense_tables_bytes_per_step": dense_allreduce_bytes(t.step.tables),
                },
                "comm/",
            )

    def validation(self, record: dict, val: dict) -> None:
        if not self.lead:
            return
        v, epoch = self.validator, record["epoch"]
        best, monitor = v.best, v.monitor
        if best["epoch"] == epoch:
            self.bar.total = v.horizon(epoch + 1)
            self.bar.refresh()
        self.tb.scalars(epoch, {k: x for k, x in val.items() if "@" in k}, "val/")
        self.tb.flush()
        self.bar.set_postfix(
            loss=f"{record['loss']:.4f}", val=f"{val[monitor]:.4f}", best=f"{best[monitor]:.4f}@{best['epoch']}"
        )
        log.info(
            "epoch %d loss %.4f val %s %.4f (best %.4f @ %d) %.2fs/epoch %.0f edges/s rss %.0f MiB",
            epoch,
            record["loss"],
            monitor,
            val[monitor],
            best[monitor],
            best["epoch"],
            record["epoch_s"],
            record["edges_per_s"],
            peak_rss_mib(),
        )
        if self.runlog is not None:
            self.runlog.save()

    def epoch_done(self) -> None:
        self.bar.update()

    def early_stop(self, epoch: int) -> None:
        if self.lead:
            log.info("early stop at epoch %d: %d checks without improvement", epoch, self.validator.bad_checks)

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def final(self, summary: dict) -> None:
        """The test metrics (the best validation ones with ``train.test: false``) and the run's
        hyperparameters, then the event files are closed."""
        cfg, tc = self.trainer.cfg, self.trainer.cfg.train
        split = "test" if "test" in summary else "val"
        self.tb.scalars(summary["best_epoch"], summary[split], f"{split}/")
        self.tb.hparams(
            {
                "model": cfg.model.name,
                "dim": cfg.model.dim,
                "layers": cfg.model.layers,
                "intents": cfg.model.intents,
                "lr": tc.lr,
                "batch_size": tc.batch_size,
                "workers": self.trainer.world,
                "seed": tc.seed,
                **{f"loss.{k}": v for k, v in vars(cfg.loss).items()},
            },
            {f"{split}/{k}" if split == "val" else k: v for k, v in summary[split].items() if "@" in k},
        )
        self.tb.close()
