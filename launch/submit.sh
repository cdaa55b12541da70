#!/usr/bin/env bash
# Submit a stage (default: train) to a running Ray cluster with this checkout as the job's
# working directory, so the cluster runs exactly the code you have here.
#
#   RAY_ADDRESS=http://127.0.0.1:8265 bash launch/submit.sh --config configs/amazon.yaml run_root=s3://bucket/runs/amazon
#   STAGE=ingest RAY_ADDRESS=... bash launch/submit.sh --config configs/amazon.yaml run_root=... ingest.source=s3://...
#
# Arguments are forwarded to `python -m irllrec_dist.$STAGE` (a --config preset plus
# section.key=value overrides). RAY_ADDRESS is the Ray dashboard/job API, e.g. a
# `kubectl port-forward` to a KubeRay head (see k8s/README.md). Ray 2.60 clusters use token
# auth: export RAY_AUTH_TOKEN too. S3 settings (AWS_ENDPOINT_URL, AWS_*) must be in the
# cluster's environment (the RayJob pods get them from the ConfigMap and Secret), not here.
# The upload honours .gitignore (.venv/ and runs/ stay behind). RAY overrides the `ray` CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray job API, e.g. http://127.0.0.1:8265}"
STAGE=${STAGE:-train}
if [ ! -f "irllrec_dist/$STAGE.py" ]; then
  echo "submit.sh: no stage module irllrec_dist/$STAGE.py" >&2
  exit 2
fi
if [ $# -eq 0 ]; then
  echo "usage: RAY_ADDRESS=... [STAGE=train] bash launch/submit.sh --config configs/<preset>.yaml [key=value ...]" >&2
  exit 2
fi
if [ -z "${RAY:-}" ]; then
  RAY=ray
  if [ -x .venv/bin/ray ]; then RAY=.venv/bin/ray; fi
fi
exec "$RAY" job submit --address "$RAY_ADDRESS" --working-dir . -- python -m "irllrec_dist.$STAGE" "$@"
