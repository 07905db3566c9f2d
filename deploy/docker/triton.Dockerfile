# NVIDIA Triton Inference Server with the talkinghead renderers (docs/serving.md): the official
# image (24.10 = Triton 2.51, the server of the nvidia-pytriton wheel the tests run, with
# Python 3.10 for the python backend) plus torch and this package, and a model repository
# generated from the renderer-family registry (`talkinghead triton-repo`), so families from
# operators' packages (EXTRA_PACKAGES) get their models too. The python backend stub imports
# the system Python 3.10's packages, so they are installed there rather than in a venv.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

# -- wheel: this package as a wheel, without dependencies ------------------------------------
FROM ${TRITON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY talkinghead talkinghead
COPY shared shared
COPY services services
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- server ------------------------------------------------------------------------------------
FROM ${TRITON_IMAGE}
# The trainers' torch version: a TorchScript export loads in the torch that traced it or a
# newer one. The PyPI build bundles its CUDA runtime; the host driver must support it (see
# trainer-cuda.Dockerfile for choosing another CUDA build).
ARG TORCH_VERSION=2.14.1
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# OpenCV (imported with the package) needs libGL and GLib at import time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/docker/requirements/triton-py310.txt /tmp/constraints.txt
RUN python3 -m pip install --index-url "${TORCH_INDEX_URL}" \
      --extra-index-url https://pypi.org/simple "torch==${TORCH_VERSION}"
COPY --from=wheel /wheels /wheels
RUN python3 -m pip install --constraint /tmp/constraints.txt /wheels/*.whl && rm -rf /wheels
# Operators' renderer-family packages (pip requirement specifiers), installed before the
# repository is generated so their families are served too.
ARG EXTRA_PACKAGES=""
RUN if [ -n "${EXTRA_PACKAGES}" ]; then \
      python3 -m pip install --constraint /tmp/constraints.txt ${EXTRA_PACKAGES}; fi
RUN talkinghead triton-repo /models
COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/bin/talkinghead-healthcheck
# The model reads exports from the object store named by the TH_STORAGE_* / TH_S3_* settings
# given to the container, and TH_AVATAR_CACHE_SIZE / TH_TORCH_THREADS when set.
ENV TH_LOG_JSON=true
# The image's own unprivileged user.
USER triton-server
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["talkinghead-healthcheck", "url", "http://127.0.0.1:8000/v2/health/ready"]
# Explicit model control: the server loads the repository's models at start (`*`: one per
# installed family) and refuses repository polling; /v2/health/ready turns 200 once ready.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", \
     "--load-model=*", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", \
     "--allow-metrics=true", "--allow-gpu-metrics=true", "--log-verbose=0"]
