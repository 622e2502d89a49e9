"""Where a training process sits in the job, and starting the job's processes.

A training stage is always started as `xwin stage NAME --config FILE`, whatever runs it:

- torchrun, the `deepspeed` launcher or the local executor: RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR and MASTER_PORT are set; this process is one worker.
- a pod of a Kubernetes Indexed Job: JOB_COMPLETION_INDEX (the node rank), XWIN_NNODES,
  XWIN_NPROC_PER_NODE, MASTER_ADDR (pod 0's DNS name) and MASTER_PORT are set. With one process
  per node the pod is the worker (RANK = the index); with several, this process becomes the
  node's launcher and starts one worker per GPU through torchrun's own code (static rendezvous
  at MASTER_ADDR:MASTER_PORT), each running the same command line.
- nothing set: a single process on this machine (RANK 0 of 1).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch

from xwin.core.errors import ConfigError
from xwin.core.net import free_port
from xwin.models.device import select_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessPlace:
    """This process's place: a worker (rank/world) or a launcher of nproc_per_node workers."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    nnodes: int
    master_addr: str
    master_port: int
    spawn_workers: bool = False  # True: this process is a launcher, not a worker

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_node_leader(self) -> bool:
        """Local rank 0: the one process per node that moves node-local files."""
        return self.local_rank == 0



def _int_env(env: dict[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(f"environment variable {name} is required here")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r}: expected an integer") from None


def locate_process(env: dict[str, str] | None = None) -> ProcessPlace:
    """Read this process's place from the environment (see the module docstring)."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:  # a worker already
        world = _int_env(env, "WORLD_SIZE")
        local_world = _int_env(env, "LOCAL_WORLD_SIZE", _int_env(env, "XWIN_NPROC_PER_NODE", 1))
        rank = _int_env(env, "RANK")
        if not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
        local_world = max(1, min(local_world, world))
        return ProcessPlace(
            rank=rank,
            world_size=world,
            local_rank=_int_env(env, "LOCAL_RANK", rank % local_world),
            local_world_size=local_world,
            node_rank=_int_env(env, "GROUP_RANK", rank // local_world),
            nnodes=max(1, world // local_world),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int_env(env, "MASTER_PORT", 29500),
        )
    nnodes = _int_env(env, "XWIN_NNODES", 1)
    nproc = _int_env(env, "XWIN_NPROC_PER_NODE", 1)
    node_rank = _int_env(env, "JOB_COMPLETION_INDEX", 0)
    if nnodes < 1 or nproc < 1 or not 0 <= node_rank < nnodes:
        raise ConfigError(
            f"XWIN_NNODES={nnodes}, XWIN_NPROC_PER_NODE={nproc}, JOB_COMPLETION_INDEX={node_rank}: "
            "need nodes >= 1, processes >= 1 and 0 <= index < nodes"
        )
    if nnodes > 1 and "MASTER_ADDR" not in env:
        raise ConfigError("multi-node training needs MASTER_ADDR (pod 0's DNS name)")
    return ProcessPlace(
        rank=node_rank * nproc,
        world_size=nnodes * nproc,
        local_rank=0,
        local_world_size=nproc,
        node_rank=node_rank,
        nnodes=nnodes,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int_env(env, "MASTER_PORT", 29500 if nnodes > 1 else free_port()),
        spawn_workers=nproc > 1,
    )


def export_worker_env(place: ProcessPlace) -> None:
    """Set the variables torch.distributed's env:// rendezvous (and StageContext) read."""
    os.environ.update(
        RANK=str(place.rank),
        WORLD_SIZE=str(place.world_size),
        LOCAL_RANK=str(place.local_rank),
        LOCAL_WORLD_SIZE=str(place.local_world_size),
        MASTER_ADDR=place.master_addr,
        MASTER_PORT=str(place.master_port),
    )


def spawn_workers(place: ProcessPlace, argv: list[str] | None = None) -> None:
    """Run this node's workers with torchrun's own launcher (static rendezvous), each executing
    this process's command line as `python -m xwin.cli ...`; returns when all have exited,
    raises if any failed (so the pod fails and the Job retries it)."""
    from torch.distributed.run import parse_args, run

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(
        [
            f"--nnodes={place.nnodes}",
            f"--nproc-per-node={place.local_world_size}",
            f"--node-rank={place.node_rank}",
            f"--master-addr={place.master_addr}",
            f"--master-port={place.master_port}",
            "--max-restarts=0",  # retries belong to the Job / the controller, not to us
            "--module",
            "xwin.cli",
            *argv,
        ]
    )
    log.info("node %d/%d: starting %d workers", place.node_rank, place.nnodes, place.local_world_size)
    run(args)


def init_distributed(place: ProcessPlace) -> torch.device:
    """Join the process group (nccl on GPUs, gloo on the CPU); returns this worker's device, the
    device policy's for its local rank (xwin.models.device), made current before DeepSpeed starts:
    deepspeed.initialize puts the model on the current device."""
    import deepspeed

    export_worker_env(place)
    device = select_device(place.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return device


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
