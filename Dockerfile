# syntax=docker/dockerfile:1
# The serving image: onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9, which this base provides.
# On a host without a GPU the same image serves on CPU (onnxruntime falls back; COORDCONV_PROVIDERS=cpu
# skips the attempt). Only the `serve` and `client` dependencies are installed: no torch.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
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
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[serve,client]"

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
    COORDCONV_GRPC_PORT=8001
USER 10001
# 8000: HTTP (/v1, /v2, /metrics); 8001: gRPC (inference.GRPCInferenceService, grpc.health.v1)
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]
CMD ["coordconv", "serve"]
