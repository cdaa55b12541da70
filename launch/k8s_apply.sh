#!/usr/bin/env bash
# Apply a kustomize overlay (default: small), then optionally run stages in order.
#
#   bash launch/k8s_apply.sh                   # kubectl apply -k k8s/overlays/small
#   bash launch/k8s_apply.sh large             # the large overlay
#   bash launch/k8s_apply.sh small ingest train
#
# Every stage's RayJob is created suspended. Each stage named after the overlay is
# resumed (spec.suspend=false) and waited for until its Ray job SUCCEEDED; a failed
# stage stops the script with the RayJob's status. A finished RayJob does not run again:
# `kubectl -n irllrec delete rayjob irllrec-<stage>` and rerun this script to redo it
# (stages skip work already committed with the same config, so a rerun is cheap).
# Needs the namespace's Secret irllrec-s3 (k8s/README.md, step 3) and the KubeRay operator.
set -euo pipefail
cd "$(dirname "$0")/.."
overlay=${1:-small}
shift $(( $# > 0 ? 1 : 0 ))
NS=${NAMESPACE:-irllrec}
POLL_S=${POLL_S:-15}
KUBECTL=${KUBECTL:-kubectl}
if [ ! -d "k8s/overlays/$overlay" ]; then
  have=$(cd k8s/overlays && printf '%s ' */)
  echo "k8s_apply.sh: no overlay k8s/overlays/$overlay (have: ${have//\//})" >&2
  exit 2
fi
"$KUBECTL" apply -k "k8s/overlays/$overlay"

for stage in "$@"; do
  job="irllrec-$stage"
  echo "== $job: resuming"
  "$KUBECTL" -n "$NS" patch rayjob "$job" --type merge -p '{"spec":{"suspend":false}}'
  while :; do
    state=$("$KUBECTL" -n "$NS" get rayjob "$job" \
      -o jsonpath='{.status.jobDeploymentStatus}/{.status.jobStatus}' 2>/dev/null || true)
    case "$state" in
      */SUCCEEDED) echo "== $job: SUCCEEDED"; break ;;
      */FAILED|*/STOPPED|Failed/*|ValidationFailed/*)
        echo "== $job: $state" >&2
        "$KUBECTL" -n "$NS" get rayjob "$job" -o jsonpath='{.status.message}{"\n"}' >&2 || true
        exit 1 ;;
    esac
    echo "   $job: ${state:-pending}"
    sleep "$POLL_S"
  done
done
