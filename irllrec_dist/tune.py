"""Stage: choose the text losses' weights on validation, per dataset, with Ray Tune.

    python -m irllrec_dist.tune --config configs/yelp.yaml --config configs/irllrec.yaml [tune.trials=6]
    python -m irllrec_dist.train --config configs/yelp.yaml --config configs/irllrec.yaml \\
        --config <run_root>/tune/tune/tuned.yaml

The candidates are LightGCN (every text weight 0), the preset's own weights and ``tune.trials``
distinct settings drawn from the choices ``tune.prf/ia/ta/itm/warmup_epochs``. Each candidate is a
trial that runs train's own loop (``train.run_in_folder``, checkpoints through Ray Tune) as run
``runs/<tune.name>-NN`` with ``train.test: false``: the test split is never loaded, and trials are
judged on validation Recall@monitor_k only. ASHA stops trials that fall behind at rungs of
``tune.grace_epochs`` x ``tune.reduction_factor``^k epochs. The best validation score over every
trial's checks wins; ties go to the earlier candidate, so LightGCN wins a tie and the chosen
setting is never worse on validation than the model without text.

It writes ``<run_root>/tune/<tune.name>/report.json`` (the choices, every trial's settings, best
validation score and epoch, how it ended, the time used) and then, as the commit point,
``tuned.yaml``: the chosen ``loss.*`` overrides, to pass to train after the preset. Started again
with the same search, Ray Tune resumes it (finished trials are kept, unfinished ones go on from
their last check).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time

import numpy as np
import yaml

from irllrec_dist import storage
from irllrec_dist.cli import config_main
from irllrec_dist.config import Config, ConfigError, config_from_dict

log = logging.getLogger("irllrec_dist.tune")

TEXT_WEIGHTS = ("prf", "ia", "ta", "itm")
SEARCHED = (*TEXT_WEIGHTS, "warmup_epochs")  # the loss.* keys a candidate sets
INTENT_WEIGHTS = ("ia", "ta", "itm")  # need model.intents > 0; the warm-up scales only these


def tune_uri(cfg: Config, *parts: str) -> str:
    return storage.join(cfg.run_root, "tune", cfg.tune.name, *parts)


def canonical(setting: dict) -> dict:
    """The warm-up only scales IA, TA and ITM: without them every warm-up is the same run (0)."""
    out = {k: float(setting[k]) for k in SEARCHED}
    if not any(out[k] for k in INTENT_WEIGHTS):
        out["warmup_epochs"] = 0.0
    return out


def choices(cfg: Config) -> dict[str, tuple]:
    """Each searched key's choices; IA, TA and ITM are fixed at 0 for a model without intent
    prototypes (``model.intents: 0``, e.g. the RLMRec-Con preset)."""
    out = {k: tuple(getattr(cfg.tune, k)) for k in SEARCHED}
    if cfg.model.intents == 0:
        out.update({k: (0.0,) for k in INTENT_WEIGHTS})
    return out


def candidates(cfg: Config) -> list[dict]:
    """LightGCN, the preset's own weights (when they differ), then ``tune.trials`` distinct
    settings drawn (seed ``tune.seed``) from the grid of choices, without repeats."""
    lightgcn = canonical(dict.fromkeys(SEARCHED, 0))
    fixed = [lightgcn]
    preset = canonical({k: getattr(cfg.loss, k) for k in SEARCHED})
    if preset != lightgcn:
        fixed.append(preset)
    space = choices(cfg)
    grid = []
    for values in itertools.product(*(space[k] for k in SEARCHED)):
        c = canonical(dict(zip(SEARCHED, values)))
        if c not in grid and c not in fixed:
            grid.append(c)
    rng = np.random.default_rng(cfg.tune.seed)
    picked = rng.choice(len(grid), size=min(cfg.tune.trials, len(grid)), replace=False) if grid else []
    return fixed + [grid[int(i)] for i in picked]


def trial_run_name(cfg: Config, trial_id: str) -> str:
    """``<tune.name>-NN`` from Ray's trial id ``<experiment>_NNNNN`` (candidates in order)."""
    return f"{cfg.tune.name}-{int(trial_id.rsplit('_', 1)[-1]):02d}"


def trial_config(base: dict, setting: dict, trial_id: str) -> Config:
    cfg = config_from_dict(base)
    for k, v in setting.items():
        setattr(cfg.loss, k, v)
    cfg.train.run_name = trial_run_name(cfg, trial_id)
    cfg.train.test = False  # judged on validation: the test split is not even loaded
    cfg.train.threads = cfg.train.threads or 1
    cfg.validate()
    return cfg


def _trial(params: dict, base: dict, settings: list[dict]) -> None:
    """One candidate (``params["candidate"]`` indexes ``settings``): train's own loop, its checks
    reported to (and checkpointed by) Ray Tune."""
    from ray import tune

    from irllrec_dist.train import run_in_folder  # the loop itself, not a copy of it
    from irllrec_dist.training.checkpoint import RayCheckpoints

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    setting = settings[params["candidate"]]
    run_in_folder(trial_config(base, setting, tune.get_context().get_trial_id()), RayCheckpoints("tune"))


def _trial_id(trial) -> str:
    return trial.trial_id


def pick(rows: list[dict]) -> dict:
    """The trial with the best validation score; ties go to the earlier candidate (LightGCN first)."""
    scored = [r for r in rows if r["best_val"] is not None]
    if not scored:
        raise RuntimeError("no trial reached a validation check")
    return max(scored, key=lambda r: (r["best_val"], -r["candidate"]))


def _rows(cfg: Config, results, monitor: str, points: list[dict]) -> list[dict]:
    rows = []
    for result in results:
        trial_id = os.path.basename(result.path.rstrip("/"))
        name = trial_run_name(cfg, trial_id)
        df = result.metrics_dataframe
        seen = df is not None and monitor in df and df[monitor].notna().any()
        best = df.loc[df[monitor].idxmax()] if seen else None
        finished = storage.exists(storage.join(cfg.run_root, "runs", name, "metrics.json"))
        rows.append(
            {
                "candidate": result.config["candidate"],
                "run_name": name,
                **points[result.config["candidate"]],
                "best_val": float(best[monitor]) if best is not None else None,
                "best_epoch": int(best["epoch"]) if best is not None else None,
                "last_check_epoch": int(df["epoch"].max()) if seen else None,
                "ended": "error" if result.error else "ran to its end" if finished else "stopped by ASHA",
            }
        )
    return sorted(rows, key=lambda r: r["candidate"])


def tuned_yaml(cfg: Config, report: dict) -> str:
    """The chosen overrides as a preset, with the search it came from in comments."""
    chosen, monitor = report["chosen"], report["monitor"].replace("val_recall", "Recall")
    lines = [
        f"# Chosen by the tune stage on {cfg.run_root} ({report['date']}): the best validation {monitor}",
        f"# of {len(report['trials'])} trials (the test split was not read); {report['wall_s']:.0f} s wall.",
        "# Pass it to train after the preset it was tuned on. Every trial (report.json beside this file):",
        "# run | " + " | ".join(SEARCHED) + f" | best validation {monitor} @ epoch | ended",
    ]
    for r in report["trials"]:
        val = f"{r['best_val']:.4f} @ {r['best_epoch']}" if r["best_val"] is not None else "-"
        lines.append(f"# {r['run_name']} | " + " | ".join(str(r[k]) for k in SEARCHED) + f" | {val} | {r['ended']}")
    return "\n".join(lines) + "\n" + yaml.safe_dump({"loss": {k: chosen[k] for k in SEARCHED}}, sort_keys=False)


def run(cfg: Config) -> dict:
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from irllrec_dist.ray_storage import tune_storage

    t0 = time.time()
    if "://" not in cfg.run_root:  # trials do not share the driver's working directory
        cfg.run_root = os.path.abspath(cfg.run_root)
    points = candidates(cfg)
    # A search folder holds one search: started again with other candidates or another base
    # config it is refused (before Ray starts), not resumed into a mix of two searches.
    base = {k: v for k, v in cfg.to_dict().items() if k != "tune"}  # tune.*: the budget, not the search
    search_key = storage.config_hash({"base": base, "candidates": points})
    if storage.exists(tune_uri(cfg, "search.json")):
        if storage.read_json(tune_uri(cfg, "search.json"))["hash"] != search_key:
            raise ConfigError(
                f"{tune_uri(cfg)} holds a search with other settings or candidates; "
                "set tune.name to start another one beside it"
            )
    else:
        storage.write_json(tune_uri(cfg, "search.json"), {"hash": search_key, "candidates": points})
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None)
    monitor = f"val_recall@{cfg.eval.monitor_k}"
    threads = cfg.train.threads or 1
    concurrent = cfg.tune.concurrent or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    log.info(
        "tune: %d candidates (LightGCN first), %d at once, %d thread(s) each -> %s",
        len(points),
        concurrent,
        threads,
        tune_uri(cfg),
    )
    # Each trial writes its own TensorBoard events (runs/<name>-NN/tensorboard); Tune's automatic
    # TensorBoard logger would write them again, under tag names TensorBoard rejects. Its CSV and
    # JSON loggers stay: the results below are read from what they write.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    trainable = tune.with_resources(tune.with_parameters(_trial, base=cfg.to_dict(), settings=points), {"cpu": threads})
    where = tune_storage(cfg, tune_uri(cfg))
    experiment = storage.join(where["storage_path"], "search")
    if tune.Tuner.can_restore(experiment, storage_filesystem=where.get("storage_filesystem")):
        log.info("tune: resuming the search at %s", experiment)
        tuner = tune.Tuner.restore(
            experiment, trainable, resume_errored=True, storage_filesystem=where.get("storage_filesystem")
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"candidate": tune.choice(range(len(points)))},
            tune_config=tune.TuneConfig(
                metric=monitor,
                mode="max",
                # every candidate once, in order: the searcher draws nothing itself
                search_alg=BasicVariantGenerator(
                    points_to_evaluate=[{"candidate": i} for i in range(len(points))], max_concurrent=concurrent
                ),
                scheduler=ASHAScheduler(
                    time_attr="epoch",
                    max_t=cfg.train.max_epochs,
                    grace_period=cfg.tune.grace_epochs,
                    reduction_factor=cfg.tune.reduction_factor,
                ),
                num_samples=len(points),
                time_budget_s=cfg.tune.time_budget_s or None,
                trial_dirname_creator=_trial_id,  # results are matched to candidates by it
            ),
            run_config=tune.RunConfig(
                name="search", verbose=0, callbacks=[CSVLoggerCallback(), JsonLoggerCallback()], **where
            ),
        )
    results = tuner.fit()
    rows = _rows(cfg, results, monitor, points)
    chosen = pick(rows)
    report = {
        "monitor": monitor,
        "date": time.strftime("%Y-%m-%d"),
        "choices": {k: list(v) for k, v in choices(cfg).items()},
        "asha": {
            "grace_epochs": cfg.tune.grace_epochs,
            "reduction_factor": cfg.tune.reduction_factor,
            "max_epochs": cfg.train.max_epochs,
        },
        "budget": {
            "trials": len(points),
            "concurrent": concurrent,
            "threads_per_trial": threads,
            "time_budget_s": cfg.tune.time_budget_s,
        },
        "trials": rows,
        "chosen": chosen,
        "test_split_read": False,
        "wall_s": round(time.time() - t0, 1),
    }
    storage.write_json(tune_uri(cfg, "report.json"), report)
    storage.write_bytes(tune_uri(cfg, "tuned.yaml"), tuned_yaml(cfg, report).encode())  # the commit point
    log.info(
        "tune: chose %s (%s %.4f at epoch %d) of %d trials in %.0fs -> %s",
        chosen["run_name"],
        monitor,
        chosen["best_val"],
        chosen["best_epoch"],
        len(rows),
        report["wall_s"],
        tune_uri(cfg, "tuned.yaml"),
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return config_main("tune", __doc__, lambda cfg, args: run(cfg), argv)


if __name__ == "__main__":
    sys.exit(main())
