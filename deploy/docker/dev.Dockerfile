# syntax=docker/dockerfile:1
# Development image of compose's `dev` profile: the five service packages installed editable, their source
# bind-mounted over /app, so `uvicorn --reload` restarts a service when its code changes. Never for
# production (it carries every service, and compose runs it with DEBUG on).
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11.11-slim-bookworm
COPY --from=uv /uv /usr/local/bin/uv
RUN groupadd --system --gid 10001 clinomic \
 && useradd --system --uid 10001 --gid clinomic --home-dir /nonexistent --no-create-home clinomic
# The environment lives outside /app, so the bind-mounted source does not hide it.
ENV UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/venv \
    PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY shared shared
COPY services services
RUN uv sync --frozen --no-dev --package clinomic-gateway --package clinomic-auth --package clinomic-screening \
      --package clinomic-audit --package clinomic-inference
USER 10001:10001
