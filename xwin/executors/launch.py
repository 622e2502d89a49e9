"""The launch description of one stage attempt, built once and read by both executors: the
command every process runs, the environment it gets, and how many processes (completions) the
attempt has. The local executor turns it into processes on this machine, the Kubernetes
executor into the containers of an Indexed Job; neither knows about the other.

    train (gang):    completions = nodes; with one process per pod every process is a rank
                     (RANK = its completion index); with several, each pod's process is the
                     node's launcher (xwin.train.launch) and derives the ranks itself.
    sharded:         completions = shards; a process's shard is its completion index.
    single:          one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xwin.executors.base import StageJob

# The container's path of the stage spec; the local executor substitutes the spec's file.
SPEC_PATH = "/etc/xwin/spec.yaml"


@dataclass(frozen=True)
class Launch:
    """What runs, for one attempt of one stage."""

    argv: list[str]  # the same in every process: `xwin stage NAME --config SPEC`
    env: dict[str, str]  # literal variables, the same in every process
    completions: int  # processes: ranks of a gang, shards of a sharded stage, else 1
    indexed: bool  # each process knows its completion index (JOB_COMPLETION_INDEX)
    rank_vars: tuple[str, ...] = ()  # variables that hold the completion index (RANK, NODE_RANK)
    rendezvous: bool = False  # processes meet at MASTER_ADDR:MASTER_PORT (the executor's)
    user_env: dict[str, str] = field(default_factory=dict)  # the profile's `env`, set last

    def env_for(self, index: int, rendezvous: dict[str, str] | None = None) -> dict[str, str]:
        """The literal environment of completion `index`, with the executor's rendezvous
        address (MASTER_ADDR, MASTER_PORT) for a gang."""
        env = dict(self.env)
        if self.rendezvous:
            env.update(rendezvous or {})
        env.update({name: str(index) for name in self.rank_vars})
        if self.indexed:
            env["JOB_COMPLETION_INDEX"] = str(index)
        env.update(self.user_env)
        return env


def stage_launch(job: StageJob, spec_path: str = SPEC_PATH) -> Launch:
    """The launch of `job`; `spec_path`: where the process finds its stage spec."""
    profile = job.profile
    env = {
        "XWIN_RUN_ID": job.run_id,
        "XWIN_STAGE": job.stage,
        "XWIN_STAGE_ATTEMPT": str(job.attempt),
        "PYTHONUNBUFFERED": "1",  # logs reach the log file / `kubectl logs` as they are written
    }
    argv = ["xwin", "stage", job.stage, "--config", spec_path]
    if profile.kind == "train":
        env.update(XWIN_NNODES=str(profile.nodes), XWIN_NPROC_PER_NODE=str(profile.nproc_per_node))
        rank_vars: tuple[str, ...] = ()
        if profile.nproc_per_node == 1:
            # The pod's one process is the rank itself; with more processes per pod the stage's
            # launcher derives ranks from JOB_COMPLETION_INDEX.
            env.update(WORLD_SIZE=str(profile.nodes), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
            rank_vars = ("RANK", "NODE_RANK")
        return Launch(argv, env, profile.nodes, indexed=True, rank_vars=rank_vars, rendezvous=True,
                      user_env=dict(profile.env))
    if profile.kind == "sharded":
        # vLLM / the scorer split the model over every GPU of the pod.
        env["XWIN_TENSOR_PARALLEL_SIZE"] = str(max(1, profile.gpus))
        return Launch(argv, env, profile.shards, indexed=True, user_env=dict(profile.env))
    return Launch(argv, env, 1, indexed=False, user_env=dict(profile.env))
