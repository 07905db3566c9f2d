# CPU worker for the `ingest` queue (validate and normalise uploads) and the light `webhooks`
# queue (signed deliveries to callback URLs).
ARG BASE_IMAGE=talkinghead/base:0.1.0
FROM ${BASE_IMAGE}
ENV TH_WORKER_METRICS_PORT=9100
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["talkinghead-healthcheck", "worker"]
CMD ["talkinghead", "worker", "--queues", "ingest,webhooks", "--concurrency", "2"]
