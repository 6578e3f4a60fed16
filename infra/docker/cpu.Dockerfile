# syntax=docker/dockerfile:1
# adcore CPU image: lightweight pipeline steps (fetch, evaluate, register) and CPU-only training.
# Build from the repository root:
#   docker build -f infra/docker/cpu.Dockerfile -t REGISTRY/adcore-cpu:VERSION .
# torch and torchvision come first from the PyTorch CPU index (about 5x smaller than PyPI's CUDA wheels); the
# pyproject pin "torch==X" is then already met by "X+cpu", so the second install keeps the CPU build.
# Keep TORCH_VERSION / TORCHVISION_VERSION equal to the pins in pyproject.toml.
FROM python:3.11.14-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG ADCORE_EXTRAS=mlops
# The commit the image was built from, tagged on every MLflow run (`docker build --build-arg ADCORE_GIT_COMMIT=$(git rev-parse HEAD)`).
ARG ADCORE_GIT_COMMIT=""
ENV ADCORE_GIT_COMMIT=${ADCORE_GIT_COMMIT}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/adcore

RUN groupadd --system --gid 10001 adcore \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/adcore --create-home \
       --shell /usr/sbin/nologin adcore \
    && python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
       "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir "./[${ADCORE_EXTRAS}]"

USER 10001:10001
ENTRYPOINT ["adcore"]
CMD ["--help"]
