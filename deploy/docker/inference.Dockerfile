# syntax=docker/dockerfile:1
# Image of the inference service (the model worker): clinomic-inference and clinomic-shared with their locked dependencies
# (uv.lock), never the development stack. Build from the repository root:
#   docker build -f deploy/docker/inference.Dockerfile -t clinomic-inference .
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11.11-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY shared shared
COPY services/inference services/inference
# --frozen: exactly the lock, and the other workspace members need not be here; --no-editable: the venv
# alone is the application.
RUN uv sync --frozen --no-dev --no-editable --package clinomic-inference

FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 clinomic \
 && useradd --system --uid 10001 --gid clinomic --home-dir /nonexistent --no-create-home clinomic
COPY --from=build /app/.venv /app/.venv
# The verified model directory (its manifest's hashes are checked at start).
COPY services/inference/models /app/models
ENV MODEL_DIR=/app/models/b12-cbc-v2
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
USER 10001:10001
EXPOSE 8004
# Healthy once /health/ready answers 200 (started, connected, subscribed); its 503 before then fails here.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8004/health/ready', timeout=2)"]
CMD ["uvicorn", "--factory", "inference.app:create_app", "--host", "0.0.0.0", "--port", "8004", "--no-access-log"]
