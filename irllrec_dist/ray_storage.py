"""Where Ray Train keeps its resumable checkpoints (``RunConfig(storage_path=...)``).

On a cluster every node has its own disk: a checkpoint that rank 0 writes to a local path
on its node cannot be read by the worker that replaces it on another node, nor by the
controller on the driver's node. So:

- ``train.ray_storage`` set: that URI (``s3://bucket/prefix``, another pyarrow URI, or a path);
- unset, with a remote run root (``s3://...``): ``<run_root>/ray_results``, on the same object
  store with the same settings (endpoint from ``AWS_ENDPOINT_URL``, keys from the ``AWS_*``
  variables each process reads itself: nothing secret is pickled or written anywhere);
- unset, with a local run root: Ray's default (``~/ray_results`` on the driver's node).

A node-local path (a plain path, or Ray's default) is refused at start, in one line naming
``train.ray_storage``, when the run would span more than one node (the driver's node and the
nodes Ray would place the workers on). A mount every node shares (NFS) is declared as such by
writing it as ``file:///path``.
"""

from __future__ import annotations

import os
from typing import Any

from irllrec_dist.config import Config, ConfigError

RAY_RESULTS = "ray_results"


def storage_uri(cfg: Config) -> str:
    """``train.ray_storage``, else ``<run_root>/ray_results`` for a remote run root, else ''."""
    if cfg.train.ray_storage:
        return cfg.train.ray_storage
    if "://" in cfg.run_root and not cfg.run_root.startswith("file://"):
        return cfg.run_root.rstrip("/") + "/" + RAY_RESULTS
    return ""


def is_node_local(uri: str) -> bool:
    """A plain path (or '' = Ray's default under the home folder): each node has its own."""
    return "://" not in uri


def s3_filesystem():
    """pyarrow's S3 client for Ray Train, configured like ``storage.storage_options``: the
    endpoint from ``AWS_ENDPOINT_URL`` (or ``S3_ENDPOINT_URL``), the region from
    ``AWS_REGION``/``AWS_DEFAULT_REGION``, no keys (each process resolves them from its own
    environment, so the pickled filesystem that travels to the workers carries none)."""
    from pyarrow import fs

    kwargs: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return fs.S3FileSystem(**kwargs)


def run_config_storage(cfg: Config) -> dict[str, Any]:
    """``RunConfig`` keyword arguments (``storage_path``, ``storage_filesystem``) for this run.

    Call it after ``ray.init``: with a node-local path it checks where the run would go and
    raises ``ConfigError`` when that is more than one node."""
    uri = storage_uri(cfg)
    if is_node_local(uri):
        refuse_if_multinode(cfg, uri)
        return {"storage_path": os.path.abspath(uri) if uri else None}
    if uri.startswith("s3://"):
        return {"storage_path": uri[len("s3://") :].rstrip("/"), "storage_filesystem": s3_filesystem()}
    return {"storage_path": uri}


def tune_storage(cfg: Config, uri: str) -> dict[str, Any]:
    """``RunConfig`` keyword arguments for a Ray Tune search kept at ``uri`` (under the run root),
    where its trials' checkpoints and results live. Call it after ``ray.init``. A node-local
    path is refused on a cluster of more than one node (trials elsewhere could not write there)."""
    import ray

    if is_node_local(uri):
        if sum(1 for n in ray.nodes() if n.get("Alive")) > 1:
            raise ConfigError(
                f"run_root: the tune stage keeps its search under {uri!r}, a path each node of this "
                "multi-node cluster has its own copy of; use an s3:// run_root"
            )
        return {"storage_path": os.path.abspath(uri)}
    if uri.startswith("s3://"):
        return {"storage_path": uri[len("s3://") :].rstrip("/"), "storage_filesystem": s3_filesystem()}
    if uri.startswith("file://"):
        return {"storage_path": uri[len("file://") :]}
    return {"storage_path": uri}


def run_nodes(workers: int, resources: dict[str, float], timeout_s: float = 30.0) -> set[str] | None:
    """The ids of the nodes this run would use: the driver's, and those a placement group of
    the workers' bundles (Ray Train's own request: ``PACK``) lands on now. None when the
    placement group cannot be placed within ``timeout_s`` (resources busy)."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    nodes = {ray.get_runtime_context().get_node_id()}
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) <= 1:
        return nodes
    pg = placement_group([dict(resources) for _ in range(workers)], strategy="PACK")
    try:
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            return None
        return nodes | set(placement_group_table(pg)["bundles_to_node_id"].values())
    finally:
        remove_placement_group(pg)


def refuse_if_multinode(cfg: Config, uri: str) -> None:
    import ray

    tc = cfg.train
    resources = {"CPU": float(tc.cpus_per_worker), **({"GPU": float(tc.gpus_per_worker)} if tc.gpus_per_worker else {})}
    nodes = run_nodes(tc.workers, resources)
    if nodes is None:  # cannot place now: judge by capacity (all workers fit on the driver's node?)
        here = ray.get_runtime_context().get_node_id()
        total = next((n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == here), {})
        fits = all(total.get(k, 0.0) >= v * tc.workers for k, v in resources.items())
        nodes = {here} if fits else {here, "elsewhere"}
    if len(nodes) > 1:
        where = f"the local path {uri!r}" if uri else "Ray's default (~/ray_results on each node)"
        raise ConfigError(
            f"train.ray_storage: this run spans {len(nodes)} nodes (the driver's and its {tc.workers} workers'), "
            f"but Ray Train's checkpoints would go to {where}, which each node has its own copy of; "
            "set train.ray_storage=s3://bucket/prefix (or use an s3:// run_root; file:///path for a mount "
            "every node shares)"
        )
