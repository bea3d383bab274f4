# warmstart worker / beat image. CPU by default; for NVIDIA GPUs build on an image that has
# CUDA and Python 3.11+ with pip, and a CUDA wheel index that has the pinned torch (e.g.):
#   docker build -t warmstart:cpu .
#   docker build -t warmstart:cuda \
#     --build-arg BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
# Not built in CI (no container runtime there): see docs/deploy.md.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WARMSTART_CACHE_DIR=/var/cache/warmstart \
    WARMSTART_METRICS_HOST=0.0.0.0 \
    WARMSTART_METRICS_PORT=9108

WORKDIR /opt/warmstart
# Dependencies first (a layer that changes only with pyproject.toml or the torch pin).
COPY pyproject.toml constraints.txt README.md ./
RUN python -m pip install --upgrade pip \
 && python -m pip install -c constraints.txt --extra-index-url "${TORCH_INDEX_URL}" torch
COPY . .
RUN python -m pip install -c constraints.txt --extra-index-url "${TORCH_INDEX_URL}" . \
 && useradd --create-home --uid 10001 warmstart \
 && mkdir -p /var/cache/warmstart && chown warmstart /var/cache/warmstart

USER 10001
EXPOSE 9108
# A worker by default; the beat is `warmstart beat`.
ENTRYPOINT ["warmstart"]
CMD ["worker", "--loglevel", "INFO"]
