# GPU trainer: the trainer on the shared base with torch's CUDA build in place of the CPU
# one (one GPU per container; `--concurrency 1`). The PyPI wheel bundles its CUDA runtime, so
# only the NVIDIA driver comes from the host (NVIDIA container toolkit / k8s device plugin);
# it must support that CUDA version (`nvidia-smi` shows the highest one it supports). For an
# older driver, build with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (or the
# index of the CUDA version you need).
ARG BASE_IMAGE=talkinghead/base:0.1.0
FROM ${BASE_IMAGE}
ARG TORCH_VERSION=2.14.1
ARG TORCH_INDEX_URL=https://pypi.org/simple
USER root
# Same version as the CPU build below it (exports traced here must load in Triton's torch).
RUN pip uninstall -y torch \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
      --extra-index-url https://pypi.org/simple "torch==${TORCH_VERSION}"
USER 10001:10001
ENV TH_WORKER_METRICS_PORT=9100 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
EXPOSE 9100
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["talkinghead-healthcheck", "worker"]
CMD ["talkinghead", "worker", "--queues", "train", "--concurrency", "1"]
