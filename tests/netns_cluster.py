"""The multi-node Ray cluster for tests: ``irllrec_dist.localcluster`` (one network, mount and PID
namespace per node, a bridge in a namespace of its own, SeaweedFS on the bridge) as a fixture,
plus the few helpers the tests use to look at it from inside.

    from netns_cluster import local_cluster  # noqa: F401  (the fixture)

    def test_x(local_cluster):
        local_cluster.exec("head", ["ray", "status"])

The test process itself stays in the machine's namespaces: it reaches the cluster only by
running commands inside a node (``exec``/``run_python``), as a user would through
``kubectl exec``. If namespaces cannot be created the fixture fails with the reason (it never
skips), and the cluster is torn down whatever the tests did (every process, namespace, link).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from irllrec_dist.localcluster import LocalCluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_READ_S3 = r"""
import json, os, sys
from pyarrow import fs
s3 = fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], region=os.environ["AWS_DEFAULT_REGION"])
out = {}
for path in sys.argv[1:]:
    try:
        with s3.open_input_stream(path) as f:
            out[path] = f.read().decode()
    except FileNotFoundError:
        out[path] = None
print(json.dumps(out))
"""

_LIST_S3 = r"""
import json, os, sys
from pyarrow import fs
s3 = fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], region=os.environ["AWS_DEFAULT_REGION"])
infos = s3.get_file_info(fs.FileSelector(sys.argv[1], recursive=True, allow_not_found=True))
print(json.dumps({i.path: i.size for i in infos if i.type == fs.FileType.File}))
"""

_ACTORS = r"""
import json, sys
from ray.util.state import list_actors
acts = list_actors(address=sys.argv[1], filters=[("class_name", "=", c) for c in sys.argv[2:]], detail=True,
                   limit=10000, raise_on_missing_output=False)
print(json.dumps([{"actor_id": a.actor_id, "class_name": a.class_name, "job_id": a.job_id, "node_id": a.node_id,
                   "pid": a.pid, "state": a.state} for a in acts]))
"""


@pytest.fixture(scope="module")
def local_cluster():
    """S3 + a Ray head (0 CPU, like the KubeRay head) + 3 worker nodes of 1 CPU each: 2 trainer
    workers land on 2 nodes, and a third node can take over from a killed one."""
    cluster = LocalCluster(workers=3, worker_cpus=1, python=sys.executable)
    try:
        cluster.up()  # raises ClusterError with the reason: a failure, not a skip
        yield cluster
    finally:
        cluster.down()


def read_s3(cluster: LocalCluster, *paths: str) -> dict[str, str | None]:
    """Objects' text, read from inside the head node (None: no such object)."""
    proc = cluster.run_python("head", _READ_S3, *paths, check=True, timeout=120)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def list_s3(cluster: LocalCluster, prefix: str) -> dict[str, int]:
    proc = cluster.run_python("head", _LIST_S3, prefix, check=True, timeout=120)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ray_actors(cluster: LocalCluster, class_name: str | None = None) -> list[dict]:
    """Every actor (of that class) the cluster has seen, alive or dead, with its class, node id and
    job, from Ray's state API."""
    proc = cluster.run_python(
        "head", _ACTORS, cluster.dashboard_url, *([class_name] if class_name else []), check=True, timeout=120
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_actors(cluster: LocalCluster) -> list[dict]:
    """Every Ray Train worker actor the cluster has seen (alive or dead), with its node id and job."""
    return ray_actors(cluster, "RayTrainWorker")


def submit(
    cluster: LocalCluster, *args: str, wait: bool = True, timeout: float = 600, stdout=None, stage: str = "train"
):
    """``launch/submit.sh`` (``ray job submit --working-dir <checkout> -- python -m irllrec_dist.<stage>``)
    run on the head node against the cluster's job API, as the README tells a user. ``wait=False``:
    the running Popen, its output (stdout and stderr) going to ``stdout`` (an open file)."""
    argv = ["bash", f"{REPO}/launch/submit.sh", *args]
    env = {"RAY_ADDRESS": cluster.dashboard_url, "STAGE": stage}
    if wait:
        return cluster.exec("head", argv, env=env, timeout=timeout)
    return cluster.popen("head", argv, env=env, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
