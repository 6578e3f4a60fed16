# syntax=docker/dockerfile:1
# adcore training image (CUDA). Build from the repository root:
#   docker build -f infra/docker/train.Dockerfile -t REGISTRY/adcore-train:VERSION .
#
# Why a slim Python base and not nvidia/cuda: the torch wheels that PyPI serves for Linux x86_64 are CUDA builds
# that carry their own CUDA runtime, cuBLAS and cuDNN (the nvidia-* wheels), so an nvidia/cuda base would only add
# a second copy of the same libraries; and no nvidia/cuda tag ships Python 3.11. The GPU driver (libcuda) comes
# from the node at run time through the NVIDIA container toolkit / GPU operator, steered by the two NVIDIA_* variables.
# Every Python package version comes from the repository's pyproject.toml (extra "mlops").
FROM python:3.11.14-slim-bookworm

ARG ADCORE_EXTRAS=mlops
# The commit the image was built from, tagged on every MLflow run (`docker build --build-arg ADCORE_GIT_COMMIT=$(git rev-parse HEAD)`).
ARG ADCORE_GIT_COMMIT=""
ENV ADCORE_GIT_COMMIT=${ADCORE_GIT_COMMIT}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/adcore \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Numeric uid/gid so that Kubernetes' runAsNonRoot can verify the user without reading /etc/passwd.
RUN groupadd --system --gid 10001 adcore \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/adcore --create-home \
       --shell /usr/sbin/nologin adcore \
    && python -m venv /opt/venv

WORKDIR /app
COPY . /app
# Installed as root into /opt/venv: the code and the environment stay read-only for the runtime user.
RUN pip install --no-cache-dir "./[${ADCORE_EXTRAS}]"

USER 10001:10001
ENTRYPOINT ["adcore"]
CMD ["--help"]
