"""The main job end to end with its run root on a real S3 server (SeaweedFS, see s3_server.py).

The pipeline runs as a subprocess, configured only through the environment
(AWS_ENDPOINT_URL and the AWS_* keys) and `run_root=s3://...`, exactly as on a
cluster. Everything is then checked through S3 itself: the committed outputs
exist, the dataset reads back through irllrec_dist.storage, and no object
written anywhere in the bucket carries a credential.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from s3_server import seaweedfs

from irllrec_dist.gloo_group import free_port

REPO = Path(__file__).resolve().parents[1]
BUCKET = "irllrec-e2e"
RUN = f"{BUCKET}/run"
RUN_NAME = "demo-irllrec"  # train.run_name in configs/demo.yaml
TABLES = ("users", "items", "train", "val", "test")


@pytest.fixture(scope="module")
def s3_run(tiny_llama):
    """ingest -> intents (a real transformers model: the tiny random Llama) -> embed (MiniLM) ->
    train (IRLLRec: the text vectors are used) -> evaluate, all on S3."""
    with seaweedfs(bucket=BUCKET) as server:
        env = dict(os.environ, **server.env, TQDM_DISABLE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable,
            "-m",
            "irllrec_dist.pipeline",
            "--config",
            "configs/demo.yaml",
            f"run_root=s3://{RUN}",
            "synthetic.n_users=300",
            "synthetic.n_items=200",
            "synthetic.n_intents=8",
            "train.max_epochs=4",
            "train.threads=1",
            "intents.enabled=true",
            f"intents.model={tiny_llama}",
            "intents.max_new_tokens=16",
            "intents.batch_size=50",
            "intents.max_retries=0",
            "intents.chunk_size=128",
            "intents.threads=1",
            "intents.limit=0",
        ]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (
            f"pipeline failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-6000:]}\n--- weed log ---\n{server.log_tail()}"
        )
        yield server, proc


def test_outputs_committed_on_s3(s3_run):
    server, _ = s3_run
    fs = server.filesystem()
    assert fs.exists(f"{RUN}/dataset/_group.json"), "no manifest for the dataset on S3"
    group = json.loads(fs.cat(f"{RUN}/dataset/_group.json"))  # every table and the report, one commit
    assert set(TABLES) <= set(group["tables"]) and group["meta"]["report"]["n_users"] > 0
    for t in TABLES:
        for shard in group["tables"][t]["shards"]:
            assert fs.info(f"{RUN}/dataset/{shard['path']}")["size"] == shard["bytes"], f"missing {shard['path']}"
    run = f"{RUN}/runs/{RUN_NAME}"
    metrics = json.loads(fs.cat(f"{run}/metrics.json"))
    assert metrics["epochs_run"] >= 1 and "recall@20" in metrics["test"]
    assert fs.info(f"{run}/checkpoints/best.pt")["size"] > 0
    assert fs.exists(f"{run}/recommendations/_manifest.json")
    rec = json.loads(fs.cat(f"{run}/recommendations/_manifest.json"))
    assert rec["num_rows"] > 0
    # the trainer's TensorBoard event files are on S3 too
    assert any("tfevents" in p for p in fs.find(f"{run}/tensorboard"))
    # Committed outputs carry no leftover staging attempts.
    for t in TABLES:
        attempts = [p for p in fs.ls(f"{RUN}/dataset/{t}", detail=False) if "/attempt-" in p]
        assert len(attempts) == 1, f"dataset/{t}: expected one committed attempt, found {attempts}"


def test_intents_and_embeddings_on_s3(s3_run):
    """The LLM stage's chunks and the embeddings built from them are committed on S3."""
    server, _ = s3_run
    from irllrec_dist import storage
    from irllrec_dist.artifacts import read_intents, read_report

    root = f"s3://{RUN}"
    data_items = storage.read_table(storage.join(root, "dataset", "items"))
    for side in ("items", "users"):
        table = read_intents(root, side)
        ids = table.column("id").to_numpy()
        assert len(ids) == len(set(ids)) > 0  # every entity exactly once
        assert set(table.column("model").to_pylist()) == {server_model(s3_run)}
        emb = storage.read_table(storage.join(root, "embeddings", side))
        meta = storage.read_manifest(storage.join(root, "embeddings", side))["meta"]
        assert meta["text_source"] == "intents" and meta["from_llm"] == len(ids)
        assert emb.column("profile").type.list_size == 384
    assert read_intents(root, "items").num_rows == data_items.num_rows  # every synthetic item has text
    assert read_report(root)["sides"]["items"]["entities"] == data_items.num_rows
    history = storage.read_json(storage.join(root, "runs", RUN_NAME, "metrics.json"))["history"]
    assert {"prf", "ia", "ta", "itm"} <= set(history[-1])  # the text tower trained on those vectors


def server_model(s3_run) -> str:
    _, proc = s3_run
    return next(a.split("=", 1)[1] for a in proc.args if a.startswith("intents.model="))


def test_dataset_reads_back_through_storage(s3_run):
    server, _ = s3_run
    from irllrec_dist import storage

    root = f"s3://{RUN}"
    for t in TABLES:
        uri = storage.join(root, "dataset", t)
        manifest = storage.read_manifest(uri)
        assert manifest is not None and storage.is_complete(uri, manifest["config_hash"])
        table = storage.read_table(uri)
        assert table.num_rows == manifest["num_rows"] > 0
    train = storage.read_table(storage.join(root, "dataset", "train"))
    users = storage.read_table(storage.join(root, "dataset", "users"))
    items = storage.read_table(storage.join(root, "dataset", "items"))
    assert "user" in train.column_names and "item" in train.column_names
    assert train.column("user").to_numpy().max() < users.num_rows
    assert train.column("item").to_numpy().max() < items.num_rows
    assert storage.read_json(storage.join(root, "runs", RUN_NAME, "metrics.json"))["run_name"] == RUN_NAME


def test_no_credentials_in_any_object(s3_run):
    server, proc = s3_run
    fs = server.filesystem()
    secrets = [server.access_key.encode(), server.secret_key.encode()]
    objects = fs.find(BUCKET)
    assert any(p.endswith("metrics.json") for p in objects) and any(p.endswith("best.pt") for p in objects)
    for path in objects:
        blob = fs.cat(path)
        texts = [blob]
        if path.endswith(".parquet"):  # values may sit in compressed pages: check decoded too
            texts.append(repr(pq.read_table(io.BytesIO(blob)).to_pydict()).encode())
        for text in texts:
            for s in secrets:
                assert s not in text, f"s3://{path} contains a credential"
    for stream in (proc.stdout, proc.stderr):
        for s in secrets:
            assert s.decode() not in stream, "pipeline output contains a credential"


def _write_events(folder: Path, tag: str, values: list[float]) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(str(folder))
    for step, v in enumerate(values):
        summ = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v)])
        w.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summ))
    w.close()


def test_tensorboard_reads_run_root_on_s3(s3_run, tmp_path):
    """launch/tensorboard.sh s3://... (what the k8s TensorBoard Deployment runs) serves logs from S3."""
    server, _ = s3_run
    _write_events(tmp_path / "ev", "loss", [0.9, 0.5, 0.3])
    (event_file,) = (tmp_path / "ev").iterdir()
    fs = server.filesystem()
    fs.put(str(event_file), f"{RUN}/runs/tb-check/{event_file.name}")

    port = free_port()
    env = dict(os.environ, **server.env, TB_HOST="127.0.0.1", TB_PORT=str(port))
    env.pop("FSSPEC_S3", None)
    proc = subprocess.Popen(
        ["bash", "launch/tensorboard.sh", f"s3://{RUN}", "--reload_interval", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline, tags, last = time.time() + 90, {}, None
        while time.time() < deadline:
            assert proc.poll() is None, f"tensorboard exited:\n{proc.stdout.read().decode()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as r:
                    tags = json.loads(r.read())
                if "loss" in tags.get("tb-check", {}):
                    break
            except OSError as e:
                last = e
            time.sleep(1)
        assert "loss" in tags.get("tb-check", {}), f"no scalars from S3 (tags={tags}, last error={last!r})"
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=tb-check&tag=loss"
        with urllib.request.urlopen(url, timeout=5) as r:
            points = json.loads(r.read())
        assert [round(p[2], 3) for p in points] == [0.9, 0.5, 0.3]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
