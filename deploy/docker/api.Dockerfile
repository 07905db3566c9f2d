# The REST API (`talkinghead serve`). Also runs the reconciler (`talkinghead reconciler`).
ARG BASE_IMAGE=talkinghead/base:0.1.0
FROM ${BASE_IMAGE}
ENV TH_API_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["talkinghead-healthcheck", "api"]
# Two uvicorn processes per container; scale containers (replicas) for more.
CMD ["talkinghead", "serve", "--workers", "2"]
