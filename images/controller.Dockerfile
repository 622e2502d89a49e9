# syntax=docker/dockerfile:1
# The controller image: `xwin run` with executor.kind: kubernetes, in the chart's controller Job.
# It plans, creates stage Jobs, watches them and writes the report; it trains nothing, so no torch,
# transformers, DeepSpeed, vLLM or CUDA (tests/unit/test_controller_imports.py keeps it so).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
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

COPY images/constraints.txt images/constraints.txt
COPY pyproject.toml README.md ./
COPY xwin xwin
COPY jobs jobs
RUN pip install -c images/constraints.txt --no-deps . \
 && pip install -c images/constraints.txt \
      kubernetes boto3 pydantic pydantic-settings PyYAML tenacity tqdm rich typer httpx numpy \
      matplotlib \
 && xwin --help > /dev/null

USER 10001:10001
WORKDIR /var/lib/xwin
ENTRYPOINT ["xwin"]
CMD ["--help"]
