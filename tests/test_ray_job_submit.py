"""`ray start --head` on loopback, then `ray job submit -- python -m irllrec_dist.train ...` to completion."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from irllrec_dist.config import SyntheticConfig
from irllrec_dist.data import synthetic
from irllrec_dist.gloo_group import free_port

BIN = Path(sys.executable).parent


def test_ray_job_submit_runs_training(tmp_path):
    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=2, n_users=300, n_items=200, n_intents=8)), str(raw))
    # token auth is on by default in Ray 2.60: give the cluster and the client the same token
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
        TQDM_DISABLE="1",
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
    )
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    # Ray's socket paths live under --temp-dir and must stay under 107 bytes: keep it short.
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    start = subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            f"--temp-dir={ray_tmp}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert start.returncode == 0, start.stderr[-3000:]
    try:
        root = tmp_path / "root"
        ingest = subprocess.run(
            [sys.executable, "-m", "irllrec_dist.ingest", f"run_root={root}", f"ingest.source={raw}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ingest.returncode == 0, ingest.stderr[-3000:]
        workdir = tmp_path / "job"
        workdir.mkdir()
        job = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{dash}",
                "--working-dir",
                str(workdir),
                "--",
                "python",
                "-m",
                "irllrec_dist.train",
                f"run_root={root}",
                "train.workers=2",
                "train.max_epochs=4",
                "train.run_name=submitted",
                "train.batch_size=512",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert job.returncode == 0, (job.stdout[-3000:], job.stderr[-3000:])
        assert "succeeded" in job.stdout + job.stderr
        metrics = json.loads((root / "runs" / "submitted" / "metrics.json").read_text())
        assert metrics["workers"] == 2 and metrics["replicas_identical"]
        assert metrics["epochs_run"] == 4 and metrics["test"]["recall@20"] > 0
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
