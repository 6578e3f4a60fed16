# syntax=docker/dockerfile:1
# MLflow tracking server for infra/k8s: mlflow plus the PostgreSQL driver and boto3 for the S3 artifact store.
# (The upstream MLflow image has no PostgreSQL driver.) Build from the repository root:
#   docker build -f infra/docker/mlflow.Dockerfile -t REGISTRY/adcore-mlflow:VERSION .
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp

COPY infra/docker/mlflow-requirements.txt /tmp/mlflow-requirements.txt
RUN groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mlflow \
    && python -m venv /opt/venv \
    && pip install --no-cache-dir -r /tmp/mlflow-requirements.txt \
    && rm /tmp/mlflow-requirements.txt

WORKDIR /tmp
USER 10001:10001
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--help"]
