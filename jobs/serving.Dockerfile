# Vertex AI custom-container prediction image: serves one model directory (AIP_STORAGE_URI) on
# AIP_HTTP_PORT with AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE (jobs/serving.py).
#   docker build -f jobs/serving.Dockerfile -t IMAGE .
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY lbtrain ./lbtrain
COPY services ./services
COPY functions ./functions
COPY jobs ./jobs
RUN pip install '.[jobs]' && useradd --uid 10001 app
USER app
CMD ["python", "-m", "jobs.serving"]
