"""The tune stage (issue 23): candidates, the pick, and a real Ray Tune search end to end on a
tiny text dataset whose test split is corrupted first, so that any read of it would fail."""

import pathlib

import pytest
import yaml

from irllrec_dist import embed, ingest, storage, train, tune
from irllrec_dist.config import Config, SyntheticConfig, load_config
from irllrec_dist.data import synthetic
from irllrec_dist.data.dataset import dataset_uri

LIGHTGCN = {"prf": 0, "ia": 0, "ta": 0, "itm": 0, "warmup_epochs": 0}


def test_candidates_lightgcn_then_the_preset_then_distinct_draws():
    cfg = Config()
    cfg.model.intents = 8
    cfg.loss.prf, cfg.loss.ia, cfg.loss.warmup_epochs = 0.01, 0.02, 20
    cfg.tune.prf, cfg.tune.ia, cfg.tune.ta, cfg.tune.itm, cfg.tune.warmup_epochs = (
        (0.0, 0.01),
        (0.0, 0.02),
        (0.0,),
        (0.0,),
        (0, 20),
    )
    cfg.tune.trials = 10  # more than the grid holds: every distinct setting once
    found = tune.candidates(cfg)
    assert found[0] == LIGHTGCN
    assert found[1] == {"prf": 0.01, "ia": 0.02, "ta": 0, "itm": 0, "warmup_epochs": 20}
    # grid: prf 2 x ia 2 x warm-up 2 = 8, but without IA the warm-up is moot (0): 2 + 4 = 6 distinct,
    # of which LightGCN and the preset are already in
    assert len(found) == 6
    assert len({tuple(sorted(c.items())) for c in found}) == 6
    assert {"prf": 0.01, "ia": 0, "ta": 0, "itm": 0, "warmup_epochs": 0} in found
    assert all(c["warmup_epochs"] == 0 for c in found if not c["ia"])
    # without intent prototypes IA, TA and ITM stay 0 whatever their choices
    cfg.model.intents, cfg.loss.ia = 0, 0.0
    assert all(c["ia"] == c["ta"] == c["itm"] == 0 for c in tune.candidates(cfg))


def test_pick_best_validation_and_ties_go_to_lightgcn():
    rows = [{"candidate": 0, "best_val": 0.10}, {"candidate": 1, "best_val": 0.12}, {"candidate": 2, "best_val": None}]
    assert tune.pick(rows)["candidate"] == 1
    rows[1]["best_val"] = 0.10
    assert tune.pick(rows)["candidate"] == 0


def _corrupt_test_split(run_root: pathlib.Path) -> list[pathlib.Path]:
    shards = sorted(pathlib.Path(storage.join(dataset_uri(str(run_root)), "test")).rglob("*.parquet"))
    for shard in shards:  # same size, other bytes: only a read that checks the sha256 notices
        shard.write_bytes(bytes(b ^ 0xFF for b in shard.read_bytes()))
    return shards


def test_tune_end_to_end_two_trials_never_reads_the_test_split(tmp_path, capsys):
    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=5, n_users=150, n_items=80, n_intents=8)), str(raw))
    root = tmp_path / "root"
    preset = tmp_path / "rlmrec.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "run_root": str(root),
                "ingest": {"source": str(raw), "format": "parquet"},
                "loss": {"prf": 0.01},
                "train": {"run_name": "rlm", "max_epochs": 6, "eval_every": 2, "batch_size": 256, "threads": 1},
                "tune": {"name": "t", "trials": 0, "grace_epochs": 2},
            }
        )
    )
    cfg = load_config(str(preset))
    ingest.run(cfg)
    embed.run(cfg)
    assert _corrupt_test_split(root), "the dataset has test shards"

    assert tune.main(["--config", str(preset)]) == 0
    report = storage.read_json(str(root / "tune" / "t" / "report.json"))
    trials = report["trials"]
    assert [t["run_name"] for t in trials] == ["t-00", "t-01"]
    assert {k: trials[0][k] for k in LIGHTGCN} == LIGHTGCN  # LightGCN is always a candidate
    assert trials[1]["prf"] == 0.01 and trials[1]["ia"] == 0
    assert all(t["best_val"] is not None and t["last_check_epoch"] >= 2 for t in trials)
    chosen = report["chosen"]
    assert chosen["best_val"] == max(t["best_val"] for t in trials) >= trials[0]["best_val"]
    assert report["test_split_read"] is False
    for t in trials:  # trials that ran to their end wrote metrics.json, without test metrics
        metrics = root / "runs" / t["run_name"] / "metrics.json"
        if metrics.exists():
            assert "test" not in storage.read_json(str(metrics))

    tuned = root / "tune" / "t" / "tuned.yaml"
    cfg_tuned = load_config([str(preset), tuned.as_uri()])  # a preset under a storage URI, as on S3
    assert {k: getattr(cfg_tuned.loss, k) for k in LIGHTGCN} == {k: chosen[k] for k in LIGHTGCN}

    # Started again, the same search is resumed, not redone: the trials and the choice stay.
    assert tune.main(["--config", str(preset), "tune.concurrent=1"]) == 0
    again = storage.read_json(str(root / "tune" / "t" / "report.json"))
    assert [(t["run_name"], t["best_val"]) for t in again["trials"]] == [(t["run_name"], t["best_val"]) for t in trials]
    # Other candidates under the same name: refused in one line, exit code 2, nothing mixed in.
    capsys.readouterr()
    assert tune.main(["--config", str(preset), "tune.trials=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a search with other settings" in err[0], err

    # The check bites: train, which scores the test split at its end, loads it and fails on it.
    capsys.readouterr()
    assert train.main(["--config", str(preset), "train.run_name=with-test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test" in err[0] and "sha256" in err[0], err


@pytest.fixture(autouse=True)
def _no_ray_left():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
