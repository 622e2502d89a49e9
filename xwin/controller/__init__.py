"""The controller: runs the Xwin-LM pipeline from one config, embedded (local processes) by
default or as Kubernetes Jobs.

    graph.py      the stages' inputs, content-address keys, the plan of a run (make_plan)
    state.py      the run record (stages, attempts, timings, keys) kept in the artifact store
    pipeline.py   Controller: runs a plan through an executor, retries, interrupts, resume
    jobs.py       a planned stage as a StageJob, the executor a config names, `xwin render`'s jobs
    progress.py   the live table / per-line progress
    report.py     report.md + plots from the committed artifacts
    api.py        run / resume / status / report / runs / cancel as functions (`xwin.cli`)
"""
