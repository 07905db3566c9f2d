# Trainer worker for the `train` queue on CPU (small presets, CI, clusters without GPUs);
# trainer-cuda.Dockerfile is the GPU variant. One training segment at a time per process:
# a segment is bounded (shorter than TH_VISIBILITY_TIMEOUT_S) and resumes from the last
# checkpoint, so on SIGTERM Celery's warm shutdown finishes it and the next segment goes
# back to the queue. Give the container a stop grace period longer than a segment.
ARG BASE_IMAGE=talkinghead/base:0.1.0
FROM ${BASE_IMAGE}
ENV TH_WORKER_METRICS_PORT=9100
EXPOSE 9100
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["talkinghead-healthcheck", "worker"]
CMD ["talkinghead", "worker", "--queues", "train", "--concurrency", "1"]
