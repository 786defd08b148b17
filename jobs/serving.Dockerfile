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
# torch's CPU build (endpoints serve on CPU machines), then the tasks' libraries and storage for a gs://
# AIP_STORAGE_URI.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install '.[jobs,gcs]' && useradd --uid 10001 app
USER app
CMD ["python", "-m", "jobs.serving"]
