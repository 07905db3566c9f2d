# CPU render worker for the `render` and `finish` queues: normalises the speech, computes features and
# per-frame conditions, sends frames to Triton (which holds the renderers on the GPUs) and
# encodes the mp4. TH_TRITON_URL must point at the Triton service.
ARG BASE_IMAGE=talkinghead/base:0.1.0
FROM ${BASE_IMAGE}
ENV TH_WORKER_METRICS_PORT=9100 \
    TH_RENDER_BACKEND=triton \
    TH_TRITON_PROTOCOL=grpc
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["talkinghead-healthcheck", "worker"]
CMD ["talkinghead", "worker", "--queues", "render,finish", "--concurrency", "2"]
