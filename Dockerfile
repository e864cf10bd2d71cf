# cvtasks serving image: one image for every task (the command picks the task).
# Build: docker build -t cvtasks .     Run: see docker-compose.yml and the README's deployment section.
# BASE_IMAGE: any Debian/Ubuntu image works for CPU-only hosts (the smoke test can pass one).
ARG BASE_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

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
RUN pip install .

RUN useradd --create-home --uid 10001 cvtasks && mkdir -p /models && chown cvtasks /models
USER cvtasks
VOLUME ["/models"]
EXPOSE 50051 9464

# Healthy = the gRPC health service answers SERVING (models loaded and warmed up); it probes
# 127.0.0.1:$CVTASKS_PORT (50051), or the plaintext --health-port when CVTASKS_HEALTH_PORT is set.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-m", "services.healthcheck"]

ENTRYPOINT ["cvtasks"]
CMD ["serve", "--task", "detection", "--port", "50051"]
