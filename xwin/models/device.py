"""Where a model runs: the one device policy of every stage that runs a model (the trainers, the
score stage, eval's reward scoring, the HF generation backend, and so the judge's answers and
prepare's pair generation). vLLM places its own weights and only asks whether a GPU is here.

The policy: CUDA when torch sees a GPU, the process's local rank choosing among the GPUs it
sees (LOCAL_RANK, which torchrun, the local executor and the pod launcher set; 0 when unset);
else the CPU. Local rank N needs N + 1 visible GPUs: a node started with more workers than GPUs
fails at once, naming both numbers, instead of two workers sharing one GPU.
"""

from __future__ import annotations

import os

import torch

from xwin.core.errors import ConfigError

LOCAL_RANK_ENV = "LOCAL_RANK"


def env_local_rank() -> int:
    """This process's local rank from the environment (0 for a process no launcher started)."""
    raw = os.environ.get(LOCAL_RANK_ENV, "0")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {LOCAL_RANK_ENV}={raw!r}: expected an integer") from None


def model_device(local_rank: int | None = None) -> torch.device:
    """The device this process runs its model on: cuda:<local rank> when CUDA is present, else
    the CPU. `local_rank` None reads LOCAL_RANK (see the module docstring)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    rank = env_local_rank() if local_rank is None else local_rank
    count = torch.cuda.device_count()
    if not 0 <= rank < count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise ConfigError(
            f"local rank {rank} has no GPU: this process sees {count} CUDA device(s) "
            f"(CUDA_VISIBLE_DEVICES={visible}); start at most {count} workers per node"
        )
    return torch.device("cuda", rank)


def select_device(local_rank: int | None = None) -> torch.device:
    """model_device(), made the current CUDA device when it is one: what DeepSpeed, NCCL and
    every tensor created with device="cuda" then use."""
    device = model_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def place_model(model: torch.nn.Module, device: str | torch.device | None = None) -> torch.nn.Module:
    """`model` moved to `device`, by default the policy's (select_device()); returns the model."""
    return model.to(select_device() if device is None else torch.device(device))


# vLLM's CPU engine binds one OpenMP thread per core and keeps one core back for its frontend.
# On a machine this small that core is a large share of the compute: measured on 2 cores (AMD
# EPYC, SmolLM2-135M, 16 prompts x 8 samples x 96 tokens), binding both cores generated 576
# tokens/s against 325 with one held back (1.77x).
SMALL_CPU_MACHINE_CORES = 4
VLLM_CPU_THREAD_SETTINGS = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "OMP_NUM_THREADS")


def vllm_cpu_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment settings for a vLLM engine on this machine: on a CPU-only machine with at most
    SMALL_CPU_MACHINE_CORES usable cores, every core computes and none is reserved. Empty on a
    GPU, on a bigger machine, and wherever the environment already says how to thread (someone
    chose, or the local executor split the cores between processes)."""
    environ = os.environ if environ is None else environ
    if torch.cuda.is_available() or any(name in environ for name in VLLM_CPU_THREAD_SETTINGS):
        return {}
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > SMALL_CPU_MACHINE_CORES:
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
