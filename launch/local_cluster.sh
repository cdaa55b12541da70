#!/usr/bin/env bash
# A multi-node Ray cluster on this machine (root): S3 (SeaweedFS), a Ray head and worker nodes,
# each in its own network, mount and PID namespace on a private bridge (irllrec_dist/localcluster.py).
#
#   bash launch/local_cluster.sh up [--workers 2] [--worker-cpus 1]    # prints addresses and next steps
#   bash launch/local_cluster.sh exec head -- ray status
#   bash launch/local_cluster.sh exec head -- env RAY_ADDRESS=http://10.213.0.10:8265 \
#       bash "$PWD/launch/submit.sh" --config configs/irllrec.yaml run_root=s3://irllrec/run train.workers=2
#   bash launch/local_cluster.sh kill-node w1 ; bash launch/local_cluster.sh restart-node w1
#   bash launch/local_cluster.sh status
#   bash launch/local_cluster.sh down            # or: down --all (every local cluster and stray irl-* namespace)
#
# Commands run inside a node get the node's environment (AWS_ENDPOINT_URL and keys, the Ray
# token, RAY_ADDRESS=<head>:6379); `--id ID` picks a cluster when several are up.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m irllrec_dist.localcluster "$@"
