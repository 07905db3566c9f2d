# CPU worker for the `preprocess` queue: face tracking, head pose, masks, background plate
# and audio features (mediapipe, OpenCV, torch on CPU). One task per process: it uses the
# cores it is given; scale with replicas.
ARG BASE_IMAGE=talkinghead/base:0.1.0
FROM ${BASE_IMAGE}
ENV TH_WORKER_METRICS_PORT=9100
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["talkinghead-healthcheck", "worker"]
CMD ["talkinghead", "worker", "--queues", "preprocess", "--concurrency", "1"]
