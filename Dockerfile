# `docker build -t coordconv-serving .` builds the serving image: the last stage, `default`, is the
# `serve` stage as it is. onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9, which this base provides.
# On a host without a GPU the same image serves on CPU (onnxruntime falls back; COORDCONV_PROVIDERS=cpu
# skips the attempt). Only the `serve`, `client` and `tracing` dependencies are installed: no torch.
# The trainer (CPU torch) is a target of its own, asked for by name: `--target train`.
# No `# syntax=` line: the builder's own Dockerfile frontend, so nothing is fetched from a registry
# but the base image.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# The sources and a Python to build virtual environments with; `build` and `train` start here.
FROM ${CUDA_IMAGE} AS source
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY coordconv/ coordconv/
COPY service/ service/
COPY training/ training/
COPY client/ client/

FROM source AS build
# pip and setuptools leave too: the serving image installs nothing at run time.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[serve,client,tracing]" \
    && /opt/venv/bin/pip uninstall -y -q pip setuptools

FROM ${CUDA_IMAGE} AS serve
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin coordconv
COPY --from=build /opt/venv /opt/venv
# The shipped models; mount another repository over /models to serve your own.
COPY models/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    COORDCONV_MODEL_DIR=/models \
    COORDCONV_HOST=0.0.0.0 \
    COORDCONV_PORT=8000 \
    COORDCONV_GRPC_PORT=8001 \
    COORDCONV_DRAIN_DELAY_S=5
USER 10001
# 8000: HTTP (/v1, /v2, /metrics); 8001: gRPC (inference.GRPCInferenceService, grpc.health.v1)
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "service.probe"]
CMD ["coordconv", "serve"]

# The trainer, built only when asked for (`docker build --target train -t coordconv-trainer .`, or
# `docker compose --profile trainer run --rm trainer`): retrains and re-exports the shipped models
# into a mounted, writable /models. CPU torch, pinned as in the Makefile: PyTorch's CPU index
# by default; `--build-arg TORCH_INDEX_URL=` leaves pip to PyPI and PIP_FIND_LINKS (a folder or
# URL of wheels, as `make docker-test` passes where that index cannot be reached).
FROM source AS train
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
# The export's parity check runs onnxruntime: the CPU package, not the serving image's GPU one.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$TORCH" \
    && /opt/venv/bin/pip install --no-cache-dir ".[train]" "onnxruntime>=1.20" "$TORCH" \
    && rm -rf /src/*
WORKDIR /work
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001
CMD ["coordconv", "models", "--repo", "/models", "--runs", "/tmp/runs"]

# The default target, last: the serving image, `serve` unchanged (the same image ID). BuildKit,
# Docker's default builder, builds only the stages this one needs (source, build, serve). The
# classic builder (DOCKER_BUILDKIT=0) builds every stage above its target, the trainer's too, so
# with it `--target serve` (what compose asks for) is the quicker way to the same image.
FROM serve AS default
