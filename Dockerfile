# syntax=docker/dockerfile:1
# The SM1 server image, with the shipped checkpoint inside.
#
#   docker build -t sm1:gpu .                           # CUDA (Ampere, Ada, Hopper, Blackwell incl. sm_120)
#   docker build -t sm1:cpu --build-arg VARIANT=cpu .   # CPU only, several GB smaller
#   docker run --gpus all -p 127.0.0.1:8000:8000 sm1:gpu
#
# Settings come only from environment variables SM1_<NAME> (server/settings.py); the image sets
# SM1_HOST and SM1_PORT below, `-e SM1_MAX_SESSIONS=1024` and the like change the rest.
# The install steps live in docker/install.sh, which tests/deploy also runs outside Docker, so a broken
# step fails CI; tests/deploy replays this file's build and start steps for VARIANT=cpu.

# gpu or cpu: which torch build the image gets (and whether it carries a C compiler for Triton).
ARG VARIANT=gpu

FROM python:3.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv
ENV PATH="$VIRTUAL_ENV/bin:$PATH"

# ---- where torch comes from -------------------------------------------------------------------------
# Empty index: PyPI, whose Linux x86_64 torch wheels are CUDA builds (torch 2.13.0: CUDA 13.0; CUDA 12.8
# and later carry Blackwell sm_120 kernels; 13.0 needs an NVIDIA driver >= 580). Hosts with an older
# driver build with --build-arg TORCH_GPU_INDEX_URL=<PyTorch's index for a CUDA 12.8 build>.
FROM base AS torch-gpu
ARG TORCH_GPU_INDEX_URL=""
ENV TORCH_INDEX_URL=$TORCH_GPU_INDEX_URL

# PyPI has no CPU-only torch for Linux, so this is the one download host the project names: PyTorch's
# own CPU wheel index (about 0.2 GB instead of several GB of CUDA libraries). Override it for a mirror.
FROM base AS torch-cpu
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV TORCH_INDEX_URL=$TORCH_CPU_INDEX_URL

# ---- build: a virtual environment with torch and the sm1 package (not editable: no source tree later) ---
# (hadolint takes torch-${VARIANT} for an untagged image: it is a stage of this file, chosen by VARIANT)
# hadolint ignore=DL3006
FROM torch-${VARIANT} AS builder
ARG TORCH_VERSION=2.13.0
ENV TORCH_VERSION=$TORCH_VERSION
RUN python -m venv "$VIRTUAL_ENV"
WORKDIR /src
COPY docker/install.sh docker/
# torch first, in its own layer: it is most of the image and changes far less often than the code
RUN sh docker/install.sh torch
COPY pyproject.toml README.md ./
COPY sm1 sm1
COPY server server
COPY clients clients
RUN sh docker/install.sh project

# ---- runtime --------------------------------------------------------------------------------------------
FROM base AS runtime-cpu

# Triton (torch's CUDA kernels for the scan) compiles a small launcher with the system C compiler the
# first time a kernel runs, so the CUDA image keeps gcc.
FROM base AS runtime-gpu
# (unpinned apt packages: the base image tag fixes the Debian release; exact package versions would
# break the build at every Debian point release)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# which GPUs: from `--gpus` or the compose device reservation; what the container may use of the driver:
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

# (runtime-${VARIANT} is a stage of this file too, not an image)
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS runtime
RUN groupadd --gid 10001 sm1 && useradd --create-home --uid 10001 --gid 10001 sm1
COPY --from=builder /opt/venv /opt/venv
COPY checkpoints /opt/sm1/checkpoints
COPY docker/healthcheck.py /opt/sm1/healthcheck.py
# SM1_CHECKPOINTS: where `load(None)` finds the shipped default; SM1_CHECKPOINT (singular) picks another.
ENV SM1_CHECKPOINTS=/opt/sm1/checkpoints \
    SM1_HOST=0.0.0.0 \
    SM1_PORT=8000
USER 10001:10001
WORKDIR /home/sm1
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD ["python", "/opt/sm1/healthcheck.py"]
ENTRYPOINT ["sm1-server"]
