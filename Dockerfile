# syntax=docker/dockerfile:1
#
# The `tune` image: the CLI, the trainer and the search, with CUDA-enabled torch.
#
#   docker build -t tune .
#   docker run --rm --gpus 1 -e TUNE_STORAGE=postgresql+psycopg2://... tune worker --study loss-weights
#
# Base image choice: python slim, not nvidia/cuda. The torch==2.13.0 wheels that uv.lock pins for
# linux x86_64 are CUDA 13.0 builds that bring their own CUDA runtime, cuBLAS, cuDNN and NCCL as
# nvidia-* wheels. The only thing the container needs from the host is the driver (libcuda, which
# the NVIDIA Container Toolkit mounts in at run time; CUDA 13 wants driver 580 or newer). An
# nvidia/cuda runtime base would ship a second copy of the same libraries (several GB) that torch
# does not load.
#
# Both stages use the same Python image, so the virtual environment built in the first one (whose
# interpreter is a symlink to /usr/local/bin/python3.11) runs unchanged in the second.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# A pinned uv, copied from its official image: the same resolver that wrote uv.lock.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /usr/local/bin/

# Compile bytecode once here instead of on every worker start; copy (not hard-link) out of the
# cache mount; never download a Python, use the image's.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# Dependencies first, from the lock file only, so that editing the source does not re-download
# the ~5 GB of torch and CUDA wheels. --frozen: fail instead of re-resolving if uv.lock is stale.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project

# Then the project itself, installed as a regular (non-editable) package.
COPY pyproject.toml uv.lock README.md ./
COPY trainer ./trainer
COPY search ./search
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# The toolkit mounts the driver's compute libraries only for the capabilities asked for here.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1

# A fixed, unprivileged user (uid 10001): training needs no root, and a fixed uid lets a host
# folder or a Kubernetes securityContext grant it write access.
RUN groupadd --system --gid 10001 tune \
    && useradd --system --uid 10001 --gid tune --home-dir /app --shell /usr/sbin/nologin tune

WORKDIR /app
COPY --from=builder --chown=tune:tune /app/.venv /app/.venv
# Study files are data, looked up by name (`--study loss-weights` -> studies/loss-weights.toml).
COPY --chown=tune:tune studies ./studies
# Run directories, the built-in data set cache and checkpoints are written under /app.
RUN chown tune:tune /app

USER tune

ENTRYPOINT ["tune"]
CMD ["--help"]
