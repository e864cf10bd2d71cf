# cvtasks serving image: one image for every task (the command picks the task).
# Build: docker build -t cvtasks .     Run: see docker-compose.yml and the README's deployment section.
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 NO_ALBUMENTATIONS_UPDATE=1 \
    PYTHONUNBUFFERED=1 CVTASKS_MODEL_STORE=/models
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY models ./models
COPY services ./services
RUN pip install . grpcio-health-checking

RUN useradd --create-home --uid 10001 cvtasks && mkdir -p /models && chown cvtasks /models
USER cvtasks
VOLUME ["/models"]
EXPOSE 50051

# Healthy = the gRPC health service answers SERVING (models loaded and warmed up).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
c=grpc.insecure_channel('127.0.0.1:50051'); \
sys.exit(0 if g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=4).status == h.HealthCheckResponse.SERVING else 1)"

ENTRYPOINT ["cvtasks"]
CMD ["serve", "--task", "detection", "--port", "50051"]
