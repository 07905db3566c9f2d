# The shared base of every talkinghead service image (api, ingest, preprocess, trainer,
# renderer): Python 3.11, this package and its pinned dependencies in /opt/venv, ffmpeg,
# tini, and a non-root user. Service images (deploy/docker/<service>.Dockerfile) add only
# their command, defaults and health check. Build from the repository root:
#   docker build -f deploy/docker/base.Dockerfile -t talkinghead/base:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

# -- builder: resolve and install everything into a self-contained virtual environment ------
FROM ${PYTHON_IMAGE} AS builder
# The same torch as deploy/docker/requirements/py311.txt (a test checks they agree). The CPU
# index keeps ~3 GB of CUDA libraries out of the CPU images; trainer-cuda swaps in the CUDA
# build on top of this base.
ARG TORCH_VERSION=2.14.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Builds that reach no package index (air-gapped, or the project's image test): the URL of a
# directory of wheels that holds every dependency and the build backend. pip then reads only
# that (`--no-index --find-links`); unset, the indexes above and PyPI are used.
ARG WHEELHOUSE_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
 && pip install ${WHEELHOUSE_URL:+--no-index --find-links=$WHEELHOUSE_URL} --upgrade "pip==24.2"
COPY deploy/docker/requirements/py311.txt /tmp/constraints.txt
# torch is installed on its own (its own index, TORCH_VERSION); the lock follows that choice.
RUN pip install --index-url "${TORCH_INDEX_URL}" \
      ${WHEELHOUSE_URL:+--no-index --find-links=$WHEELHOUSE_URL} "torch==${TORCH_VERSION}" \
 && sed -i "s/^torch==.*/torch==${TORCH_VERSION}/" /tmp/constraints.txt
COPY pyproject.toml README.md /src/
COPY talkinghead /src/talkinghead
COPY shared /src/shared
COPY services /src/services
# Not editable: the image needs no source tree, only the installed package.
RUN pip install ${WHEELHOUSE_URL:+--no-index --find-links=$WHEELHOUSE_URL} \
      --constraint /tmp/constraints.txt /src

# -- runtime: the venv plus the few system packages the code calls ---------------------------
FROM ${PYTHON_IMAGE} AS runtime
# ffmpeg/ffprobe: media decode and encode; tini: PID 1 that forwards SIGTERM (Celery's warm
# shutdown lets a running task finish) and reaps ffmpeg children; libgl1 and libglib2.0-0:
# OpenCV and mediapipe import them. Versions come with the pinned Debian release of the base
# image (apt version pins break as soon as the mirror moves to the next point release).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg tini libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 talkinghead \
 && useradd --system --uid 10001 --gid talkinghead --home-dir /var/lib/talkinghead \
      --create-home --shell /usr/sbin/nologin talkinghead
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/talkinghead-entrypoint
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/talkinghead-healthcheck
# TH_DATA_DIR holds only scratch space in the distributed mode (state is in PostgreSQL and S3).
# PROMETHEUS_MULTIPROC_DIR: Celery pool children and uvicorn workers record metrics there so
# the process serving /metrics reports all of them; the entrypoint empties it at start.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/talkinghead \
    MPLCONFIGDIR=/tmp/matplotlib \
    PROMETHEUS_MULTIPROC_DIR=/tmp/talkinghead-metrics \
    TH_DATA_DIR=/var/lib/talkinghead \
    TH_API_HOST=0.0.0.0 \
    TH_LOG_JSON=true
WORKDIR /var/lib/talkinghead
USER 10001:10001
ENTRYPOINT ["tini", "--", "talkinghead-entrypoint"]
CMD ["talkinghead", "--help"]
