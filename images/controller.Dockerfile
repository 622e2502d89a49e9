# syntax=docker/dockerfile:1
# The controller image: `xwin run` with executor.kind: kubernetes, in the chart's controller Job.
# It plans, creates stage Jobs, watches them and writes the report; it trains nothing, so no torch,
# transformers, DeepSpeed, vLLM or CUDA (tests/unit/test_controller_imports.py keeps it so).
# Its packages come from requirements/locks/controller.txt (`make locks`): exact versions and
# sha256 hashes, nothing resolved at build time. The base image by digest: images/README.md says
# how to bump it.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3
FROM ${PYTHON_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --gid 10001 xwin \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/xwin/home --no-create-home \
      --shell /usr/sbin/nologin xwin \
 && mkdir -p /var/lib/xwin && chown 10001:10001 /var/lib/xwin

WORKDIR /opt/xwin
COPY requirements/locks/controller.txt requirements/locks/controller.txt
RUN pip install --require-hashes --no-deps --no-build-isolation -r requirements/locks/controller.txt && pip check
COPY pyproject.toml README.md ./
COPY xwin xwin
COPY jobs jobs
RUN pip install --no-deps --no-build-isolation . \
 && xwin --help > /dev/null

USER 10001:10001
WORKDIR /var/lib/xwin
ENTRYPOINT ["xwin"]
CMD ["--help"]
