#!/usr/bin/env bash
# Set up, then run the main job end to end on the embedded default:
# synthetic planted-intent data -> ingest -> intents (real SmolLM2 on CPU) -> embed (MiniLM)
# -> IRLLRec training -> evaluate, on local storage (configs/demo.yaml).
# Extra arguments are config overrides, e.g. `bash launch/demo.sh synthetic.n_users=20000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec .venv/bin/python -m irllrec_dist.pipeline --config configs/demo.yaml "$@"
