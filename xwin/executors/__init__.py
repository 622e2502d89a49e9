"""Executors: how a stage attempt runs. One interface, two siblings that never import each other.

    base.py        the Executor interface: StageJob in, StageResult out
    profiles.py    JobProfile per stage (jobs/*.yaml + executor.profiles), kind and image from
                   the stage table
    launch.py      the launch description of an attempt: argv, environment per process,
                   completions; built once, read by both executors
    local.py       LocalExecutor: the launch as local process groups (the embedded default)
    kubernetes/    KubernetesExecutor: the launch as typed Job objects in a cluster

The controller picks one (`xwin.controller.jobs.make_executor`); executors never import the
controller or the pipeline config.
"""
