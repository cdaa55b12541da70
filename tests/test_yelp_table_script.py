"""launch/yelp_table.sh end to end on a tiny dataset preset: every row of the table trains
(one epoch), the report has them all, and a second call skips the finished rows."""

import os
import subprocess
import sys
from pathlib import Path

from irllrec_dist.config import SyntheticConfig
from irllrec_dist.data import synthetic

REPO = Path(__file__).resolve().parents[1]
ROWS = [f"{p}-s{s}" for s in (2023, 2024) for p in ("lightgcn", "rlmrec_con", "irllrec")] + [
    f"irllrec_{r}-s2023" for r in ("no_ia", "no_ta", "no_itm", "no_warmup", "reference")
]


def test_yelp_table_script_trains_every_row_and_resumes(tmp_path):
    raw = tmp_path / "raw"
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=2, n_users=120, n_items=60, n_intents=6)), str(raw))
    preset = tmp_path / "tiny.yaml"
    preset.write_text(f"run_root: {tmp_path / 'root'}\ningest:\n  format: parquet\n  source: {raw}\n")
    env = dict(os.environ, DATASET=str(preset), SEEDS="2023 2024", JOBS="2", PY=sys.executable)
    args = [
        "bash",
        str(REPO / "launch" / "yelp_table.sh"),
        "train.max_epochs=1",
        "model.intents=8",
        "loss.itm_max_nodes=32",
    ]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ROWS:
        assert (tmp_path / "root" / "runs" / name / "metrics.json").exists(), name
    table = out.stdout
    for group, n in [
        ("lightgcn", 2),
        ("rlmrec_con", 2),
        ("irllrec", 2),
        ("irllrec_no_ia", 1),
        ("irllrec_no_ta", 1),
        ("irllrec_no_itm", 1),
        ("irllrec_no_warmup", 1),
        ("irllrec_reference", 1),
        ("popularity", 1),
    ]:
        assert f"| {group} | {n} |" in table, (group, table)
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("skip ") == len(ROWS), again.stdout[-2000:]

    # ROWS picks rows and their order; PREPARED=1 trains on what is under the run root
    # without the raw files (here: moved away, so an ingest would fail).
    for name in ("irllrec-s2024", "lightgcn-s2023"):
        (tmp_path / "root" / "runs" / name / "metrics.json").unlink()
    raw.rename(tmp_path / "raw_gone")
    picked = dict(env, PREPARED="1", ROWS="irllrec-s2024 lightgcn-s2023", JOBS="1")
    out = subprocess.run(args, cwd=REPO, env=picked, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    started = [line.split()[-1] for line in out.stdout.splitlines() if " start " in line]
    assert started == ["irllrec-s2024", "lightgcn-s2023"], out.stdout[-2000:]
    assert "skip " not in out.stdout
    for rows, message in (
        ("irllrec-s9999", "no row named irllrec-s9999"),
        ("lightgcn-s2023 lightgcn-s2023", "lightgcn-s2023 named twice"),
    ):
        bad = subprocess.run(args, cwd=REPO, env=dict(picked, ROWS=rows), capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
