# One image for api, worker, beat and migrate (docker-compose.yml picks the command).
# Runtime dependencies only (requirements.lock): no embedded servers, no test or lint tools.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv
COPY requirements.lock requirements-otel.lock ./
RUN pip install --no-cache-dir -r requirements.lock
# `--build-arg OTEL=true` adds the otel extra (OpenTelemetry traces), at the same pins.
ARG OTEL=false
RUN if [ "$OTEL" = "true" ]; then pip install --no-cache-dir -r requirements-otel.lock; fi
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-deps . && useradd --system --uid 10001 stockout
USER stockout
EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
