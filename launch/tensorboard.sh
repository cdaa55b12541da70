#!/usr/bin/env bash
# TensorBoard over a run root's logs (<run_root>/runs), on local disk or on S3:
#
#   bash launch/tensorboard.sh runs/demo
#   AWS_ENDPOINT_URL=http://127.0.0.1:8333 AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
#     bash launch/tensorboard.sh s3://bucket/runs/amazon
#
# The run root defaults to $IRLLREC_RUN_ROOT, else runs/demo. Extra arguments go to
# tensorboard. TB_HOST (default 127.0.0.1) and TB_PORT (default 6006) set where it listens.
# For S3 the endpoint and keys come from the usual AWS_* variables, as for the stages.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-${IRLLREC_RUN_ROOT:-runs/demo}}
shift $(( $# > 0 ? 1 : 0 ))
TB=tensorboard
if [ -x .venv/bin/tensorboard ]; then TB=.venv/bin/tensorboard; fi
extra=()
case "$root" in
  s3://*)
    # TensorBoard reads s3:// through fsspec/s3fs; use path-style addressing against a
    # custom endpoint, as irllrec_dist.storage does. The Rust fast loader has no S3.
    if [ -n "${AWS_ENDPOINT_URL:-}" ] && [ -z "${FSSPEC_S3:-}" ]; then
      export FSSPEC_S3='{"config_kwargs": {"s3": {"addressing_style": "path"}}}'
    fi
    extra=(--load_fast false) ;;
esac
exec "$TB" --logdir "${root%/}/runs" --host "${TB_HOST:-127.0.0.1}" --port "${TB_PORT:-6006}" "${extra[@]}" "$@"
