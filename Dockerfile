# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target operator -t kubetune-operator .   slim Python, no torch
#   docker build --target trainer  -t kubetune-trainer  .   torch + transformers + accelerate
# The trainer's torch comes from TORCH_INDEX_URL when it is set (e.g. a CPU-only wheel
# index for laptop clusters), else from the default index (CUDA builds on Linux x86-64).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 kubetune \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin kubetune
WORKDIR /opt/kubetune
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer ./trainer

FROM base AS operator
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="The kubetune FineTuneJob operator and CLI (no torch)" \
      org.opencontainers.image.licenses="Apache-2.0"
# The project itself, not a package from an index: its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-compile ".[operator]"
USER 10001:10001
ENTRYPOINT ["kubetune"]
CMD ["--help"]

FROM base AS trainer
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
# trainer,example adds the all-MiniLM-L6-v2 weights that examples/gitops/job.yaml fine-tunes;
# trainer,qlora adds bitsandbytes, for training.lora.quantization.
ARG TRAINER_EXTRAS=trainer
LABEL org.opencontainers.image.title="kubetune-trainer" \
      org.opencontainers.image.description="The kubetune trainer: python -m kubetune_trainer under accelerate launch" \
      org.opencontainers.image.licenses="Apache-2.0"
# hadolint ignore=DL3013
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
        pip install --no-compile --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
    else \
        pip install --no-compile "torch==${TORCH_VERSION}"; \
    fi \
    && pip install --no-compile ".[${TRAINER_EXTRAS}]"
ENV HF_HOME=/tmp/huggingface
USER 10001:10001
ENTRYPOINT ["python", "-m", "kubetune_trainer"]
